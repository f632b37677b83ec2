"""`vaectl exps`: DVC experiments in one table that fits 120 columns."""

from rich.console import Console

from vaectl.experiments import rows, table


def commit(rev: str, name: str | None, params: dict, headline: dict, experiments=()) -> dict:
    metrics = {"reports/summary.json": {"data": headline}}
    data = {"params": {"params.yaml": {"data": params}}, "metrics": metrics}
    return {"rev": rev, "name": name, "data": data, "experiments": list(experiments)}


HEADLINE = {
    "vae": {"iw_nll": 95.123456, "neg_elbo": 99.5, "active_units": 12, "recon_bce": 80.25},
    "ae": {"recon_bce": 70.0},
    "comparisons": {"vae_better": 4, "ae_better": 8, "equivalent": 4, "inconclusive": 4},
}
BASE = {"train": {"vae": {"beta": 1.0, "latent_dim": 16, "seed": 0}, "ae": {"seed": 0}}, "eval": {"seed": 0}}
STUDY = {"train": {"vae": {"beta": 4.0, "latent_dim": 32, "seed": 2}, "ae": {"seed": 2}}, "eval": {"seed": 2}}


def document() -> list[dict]:
    trial = {"name": "study-b4-z32-s2", "revs": [commit("e1f2a3b4c5", "study-b4-z32-s2", STUDY, HEADLINE)]}
    return [
        commit("workspace", None, BASE, HEADLINE),
        commit("0123456789abcdef", "main", BASE, HEADLINE, [trial]),
    ]


def test_each_experiment_shows_the_params_it_changed_against_its_baseline():
    found = rows(document())
    assert [r["name"] for r in found] == ["workspace", "main", "  study-b4-z32-s2"]
    assert found[1]["changed"] == ""
    assert found[2]["changed"] == (
        "eval.seed=2 train.ae.seed=2 train.vae.beta=4.0 train.vae.latent_dim=32 train.vae.seed=2"
    )


def test_the_table_fits_120_columns_with_every_number_whole():
    console = Console(width=120, record=True)
    console.print(table(rows(document()), 120))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 120
    assert text.count("95.12") == 3 and text.count("4/8/4/4") == 3
    assert "VAE/AE/≈/?" in text and "study-b4-z32-s2" in text
