import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaectl import UserError
from vaectl import classifier as classifier_stage
from vaectl import evaluate as evaluate_stage
from vaectl import train as train_stage
from vaectl.data import load_split
from vaectl.interpolation import decode_path, path, path_metrics, path_ppl
from vaectl.layout import Layout
from vaectl.params import parse_params

from .conftest import synthetic_digits, use_local_store, write_prepared
from .tiny import TINY_EVAL


def linear_decoder(dim=3, seed=0):
    A = torch.randn(784, dim, generator=torch.Generator().manual_seed(seed))
    b = torch.randn(784, generator=torch.Generator().manual_seed(seed + 1))
    return (lambda z: z @ A.T + b), A


class QuadraticModel:
    """An exact model. q(z|x) = N(mu, diag(exp(logvar))) for every x, prior N(0, I), and a
    decoder whose first pixel has p(x=0|z) = exp(-(|z|^2 + 1)) (the other 783 pixels are
    certain zeros). For x = 0: log p(x) = -1 - (D/2) ln 3 (a Gaussian integral), the exact
    posterior is N(0, I/3), and E_q[-log p(x|z)] = |mu|^2 + sum(exp(logvar)) + 1."""

    variational = True

    def prior_components(self):
        return None  # the N(0, I) prior

    def __init__(self, mu, logvar, varying_dims=()):
        self.mu = torch.tensor(mu, dtype=torch.float64)
        self.logvar = torch.tensor(logvar, dtype=torch.float64)
        self.latent_dim, self.varying_dims = len(mu), varying_dims

    def encode(self, x):
        mu = self.mu.expand(len(x), -1).clone()
        for dim, scale in self.varying_dims:  # encoder means that move with the image
            mu[:, dim] += scale * x[:, 0]
        return mu, self.logvar.expand(len(x), -1)

    def decode(self, z):
        first = torch.log(torch.expm1(z.pow(2).sum(-1, keepdim=True) + 1))
        return torch.cat([first, torch.full((*z.shape[:-1], 783), -60.0, dtype=z.dtype)], -1)


def exact_metrics(model, n=200):  # 100 draws per image: the recon term's standard error ~0.04
    params = parse_params(
        {"eval": {"iw_samples": 2000, "iw_chunk": 1000, "batch_size": 50, "iw_precision": "float32"}}
    ).eval
    x = torch.zeros(n, 784, dtype=torch.float64)
    return evaluate_stage.likelihood_metrics(model, x, x, params, torch.Generator().manual_seed(0))[0]


def test_likelihoods_of_an_exact_model_have_their_closed_forms():
    """q = N(0.5, 4) in 1-D: KL = 0.5 (0.25 + 4 - 1 - ln 4), E_q[-log p(x|z)] = 0.25 + 4 + 1,
    -log p(x) = 1 + 0.5 ln 3. A missing 0.5 in the sampler's std gives recon 17.25."""
    metrics = exact_metrics(QuadraticModel([0.5], [math.log(4.0)]))
    kl = 0.5 * (3.25 - math.log(4.0))
    assert metrics["elbo_kl"] == pytest.approx(kl, abs=1e-9)
    assert metrics["elbo_recon"] == pytest.approx(5.25, abs=0.2)
    assert metrics["neg_elbo"] == pytest.approx(5.25 + kl, abs=0.2)
    assert metrics["iw_nll"] == pytest.approx(1 + 0.5 * math.log(3), abs=0.01)
    assert metrics["recon_bce"] == pytest.approx(1.25, abs=1e-9)  # decoded at the mean
    assert metrics["bits_per_dim"] == pytest.approx((1 + 0.5 * math.log(3)) / (784 * math.log(2)), rel=0.01)


def test_with_the_exact_posterior_the_elbo_is_the_likelihood():
    """q = p(z|x) = N(0, I/3) in 2-D: no ELBO gap, and every importance weight is p(x)."""
    metrics = exact_metrics(QuadraticModel([0.0, 0.0], [-math.log(3.0)] * 2))
    exact = 1 + math.log(3.0)  # -log p(x) = 1 + (D/2) ln 3, D = 2
    assert metrics["iw_nll"] == pytest.approx(exact, abs=1e-9)
    assert metrics["neg_elbo"] == pytest.approx(exact, abs=0.05)
    assert metrics["elbo_kl"] == pytest.approx(-2 / 3 + math.log(3.0), abs=1e-9)  # 2 x 0.5 (1/3 - 1 + ln 3)


def test_active_units_count_latent_dims_whose_mean_moves_across_images():
    """Active: the encoder mean's variance across images above 0.01 (Burda et al. 2016).
    Dim 0 varies with the image (variance ~1), dim 2 a little (~0.04), dim 1 barely
    (~0.0025), dims 3-4 not at all: two active units. Threshold 0.1 would count one, 0.001
    three, and across the wrong axis it would count images."""
    model = QuadraticModel([0.0] * 5, [0.0] * 5, varying_dims=[(0, 2.0), (1, 0.1), (2, 0.4)])
    params = parse_params(
        {"eval": {"iw_samples": 2, "iw_chunk": 2, "batch_size": 50, "iw_precision": "float32"}}
    ).eval
    x = torch.zeros(200, 784, dtype=torch.float64)
    x[::2, 0] = 1.0
    metrics, latents, _ = evaluate_stage.likelihood_metrics(
        model, x, x, params, torch.Generator().manual_seed(0)
    )
    assert metrics["active_units"] == 2
    unbiased = 200 / 199
    expected = [unbiased, 0.0025 * unbiased, 0.04 * unbiased]
    assert latents["encoder_mean_variance"][:3] == pytest.approx(expected)


def test_evaluation_scores_the_binarised_test_set(trained, monkeypatch):
    """With binarize: dynamic the likelihoods are of 0/1 images drawn once from the test
    pixels (the protocol), the same images for both models."""
    params, prepared, root = trained
    seen = []
    original = evaluate_stage.likelihood_metrics

    def spy(model, x, x_pixels, *args):
        seen.append((x.clone(), x_pixels.clone()))
        return original(model, x, x_pixels, *args)

    monkeypatch.setattr(evaluate_stage, "likelihood_metrics", spy)
    evaluate(params, prepared, root, reports="protocol")
    (x_vae, pixels), (x_ae, _) = seen
    assert set(x_vae.unique().tolist()) == {0.0, 1.0} and torch.equal(x_vae, x_ae)
    assert len(pixels.unique()) > 2  # what it was drawn from: grey levels
    assert abs(x_vae.mean().item() - pixels.mean().item()) < 0.01


def test_linear_decoder_gives_straight_even_paths():
    decode, _ = linear_decoder()
    z0, z1 = torch.randn(5, 3), torch.randn(5, 3)
    metrics = path_metrics(decode_path(decode, z0, z1, steps=8))
    torch.testing.assert_close(metrics["path_length_ratio"], torch.ones(5))
    torch.testing.assert_close(metrics["step_unevenness"], torch.ones(5))


def test_ppl_of_linear_decoder_is_squared_chord_and_normalises_to_one():
    _, A = linear_decoder()
    A = A.double()
    z0, z1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ppl = path_ppl(lambda z: z @ A.T, z0, z1, 1e-3, 5)
    torch.testing.assert_close(ppl["ppl"], ((z1 - z0) @ A.T).pow(2).sum(-1))
    torch.testing.assert_close(ppl["ppl_normalized"], torch.ones(4, dtype=torch.float64))


def test_normalised_ppl_of_an_accelerating_path_is_four_thirds():
    """x(u) = u^2 v on the path z(u) = u: |x'(u)|^2 = 4u^2 |v|^2, whose mean over [0, 1] is
    4/3 |v|^2 while the squared end distance is |v|^2. Random u draws would miss this by
    several percent at 64 points; the midpoint grid gets it to 1e-4."""
    v = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ppl = path_ppl(
        lambda z: z[:, :1].pow(2) * v,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        1e-4,
        64,
    )
    assert ppl["ppl_normalized"].item() == pytest.approx(4 / 3, rel=1e-3)
    assert ppl["ppl"].item() == pytest.approx(4 / 3 * v.pow(2).sum().item(), rel=1e-3)


def test_doubling_the_decoder_quadruples_raw_ppl_and_leaves_normalised_ppl_alone():
    """The comparison on a known case: the same pairs through G and 2G."""
    from vaectl.report import compare_units

    decode, _ = linear_decoder()
    bent = lambda z: torch.tanh(decode(z))  # noqa: E731 - a curved path, so values vary per pair
    z0, z1 = torch.randn(200, 3), torch.randn(200, 3)
    one, two = (path_ppl(g, z0, z1, 1e-3, 16) for g in (bent, lambda z: 2 * bent(z)))
    rng = np.random.default_rng(0)
    raw = compare_units("ppl", two["ppl"].numpy(), one["ppl"].numpy(), True, rng)
    assert raw["ratio_ci"] == pytest.approx([4, 4], rel=1e-4) and raw["verdict"] == "worse"
    normalised = compare_units(
        "ppl_normalized", two["ppl_normalized"].numpy(), one["ppl_normalized"].numpy(), True, rng
    )
    assert normalised["ratio_ci"] == pytest.approx([1, 1], rel=1e-4) and normalised["verdict"] == "equivalent"


def test_a_jump_makes_steps_uneven():
    step = lambda z: (z[:, :1] > 0.5).float().expand(-1, 784)  # noqa: E731 - a cliff at t = 0.5
    metrics = path_metrics(decode_path(step, torch.zeros(1, 1), torch.ones(1, 1), steps=10))
    assert metrics["step_unevenness"].item() == pytest.approx(10.0)
    assert metrics["path_length_ratio"].item() == pytest.approx(1.0)


def test_slerp_endpoints_and_norm():
    z0, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    points = path(z0, z1, torch.tensor([0.0, 0.5, 1.0]), "slerp")[0]
    torch.testing.assert_close(points[0], z0[0])
    torch.testing.assert_close(points[2], z1[0])
    torch.testing.assert_close(points[1].norm(), torch.tensor(1.0))


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """The tiny VAE, AE and judge, trained once for the module with their MLflow store."""
    root = tmp_path_factory.mktemp("trained")
    prepared = write_prepared(
        root / "prepared",
        {
            "train": synthetic_digits(30, seed=1),
            "val": synthetic_digits(5, seed=2),
            "test": synthetic_digits(5, seed=3),
        },
    )
    params = parse_params(TINY_EVAL)
    with pytest.MonkeyPatch.context() as mp:
        use_local_store(mp, root)
        for kind in ("vae", "ae"):
            train_stage.run(
                kind, params, prepared, root / "models" / kind, root / "reports" / "curves" / f"{kind}.json"
            )
        classifier_stage.run(params.eval.classifier, prepared, root / "models" / "classifier", "vaectl")
    return root


@pytest.fixture
def trained(trained_once, tmp_path, monkeypatch):
    """A copy of `trained_once` (files and store) that the test may change."""
    shutil.copytree(trained_once, tmp_path, dirs_exist_ok=True)
    use_local_store(monkeypatch, tmp_path)
    return parse_params(TINY_EVAL), tmp_path / "prepared", tmp_path


def evaluate(params, prepared, root, reports="reports", vae="vae", with_run=False):
    layout = Layout(root)
    report, run_id = evaluate_stage.run(
        params.eval,
        prepared,
        layout.model(vae),
        layout.model("ae"),
        layout.classifier_checkpoint,
        root / reports,
        root / reports / "figures",
        params.tracking.experiment,
        echo=lambda message: None,
    )
    return (report, run_id) if with_run else report


def test_the_evaluate_run_spans_the_work_and_holds_params_table_and_reports(trained):
    import time

    from vaectl import tracking

    params, prepared, root = trained
    began = time.time()
    report, run_id = evaluate(params, prepared, root, reports="mlflow-check", with_run=True)
    wall_ms = (time.time() - began) * 1000
    run = tracking.client().get_run(run_id)
    assert run.info.end_time - run.info.start_time > 0.5 * wall_ms  # not 43 ms for 40 s of work
    assert run.data.params["eval.iw_samples"] == "50" and run.data.params["vae.latent_dim"] == "2"
    assert "vae.iw_k" not in run.data.metrics and "vae.iw_nll" in run.data.metrics
    recon = report["comparison"]["recon_bce"]
    assert run.data.metrics["vae_over_ae.recon_bce"] == pytest.approx(recon["ratio"])
    artifacts = {a.path for a in tracking.client().list_artifacts(run_id)}
    assert artifacts == {"comparison.md", "summary.json", "metrics.json", "latents.json", "figures"}
    table = tracking.client().download_artifacts(run_id, "comparison.md", str(root / "dl"))
    rows = Path(table).read_text().splitlines()
    assert rows[2] == "| metric | VAE | AE | VAE/AE | verdict |"
    assert any(r.startswith("| iw_nll (k=50) |") for r in rows)


def test_evaluate_writes_metrics_and_is_deterministic(trained):
    params, prepared, root = trained
    report = evaluate(params, prepared, root)
    vae, ae = report["vae"], report["ae"]
    assert vae["iw_nll"] <= vae["neg_elbo"] + 1e-3  # the IWAE bound is tighter than the ELBO
    assert "iw_nll" not in ae and ae["recon_bce"] > 0
    same_ppl = report["comparison"]["same_class.ppl_normalized"]
    assert same_ppl["units"] == [4, 4] and same_ppl["vae_ci"][0] <= same_ppl["vae"] <= same_ppl["vae_ci"][1]
    compared = (
        {"recon_bce", "recon_mse"}
        | {
            f"{source}.{m}"
            for source in ("samples", "standard_normal")
            for m in ("max_prob", "entropy", "unrecognised")
        }
        | {
            f"{kind}.{m}"
            for kind in ("same_class", "diff_class")
            for m in (
                "path_length_ratio",
                "step_unevenness",
                "ppl",
                "ppl_normalized",
                "midpoint_max_prob",
                "midpoint_entropy",
            )
        }
    )
    assert set(report["comparison"]) == compared
    assert all(
        c["verdict"] in ("better", "worse", "equivalent", "inconclusive")
        for c in report["comparison"].values()
    )
    assert set(report["vae_intervals"]) >= {"iw_nll", "neg_elbo", "bits_per_dim"}
    first = (root / "reports" / "metrics.json").read_text()
    evaluate(params, prepared, root, reports="again")
    assert (root / "again" / "metrics.json").read_text() == first
    figures = sorted(p.name for p in (root / "reports" / "figures").iterdir())
    assert figures == [
        "curves.png",
        "interpolation_diff_class.png",
        "interpolation_same_class.png",
        "latent_map.png",
        "reconstructions.png",
        "samples.png",
    ]
    latents = json.loads((root / "reports" / "latents.json").read_text())
    assert latents["vae"]["active_units"] == vae["active_units"]


def test_missing_or_mismatched_model_is_a_clear_error(trained):
    params, prepared, root = trained
    with pytest.raises(UserError, match="no trained model in"):
        evaluate(params, prepared, root, vae="nope")
    with pytest.raises(UserError, match="best.pt is a 'ae' checkpoint, not a 'vae' one"):
        evaluate_stage.run(
            params.eval,
            prepared,
            Layout(root).model("ae"),
            Layout(root).model("ae"),
            Layout(root).classifier_checkpoint,
            root / "r",
            root / "r" / "f",
            "x",
        )
    images, labels = load_split(prepared, "test")  # fetched again, from another source
    write_prepared(
        prepared,
        {
            "train": load_split(prepared, "train"),
            "val": load_split(prepared, "val"),
            "test": (images[::-1].copy(), labels[::-1].copy()),
        },
    )
    with pytest.raises(UserError, match="trained on other data"):
        evaluate(params, prepared, root)


def test_quantile_grid_is_the_gaussians_quantiles_from_the_top_left():
    from vaectl.holes import quantile_grid

    q = 0.6744897501960817  # the standard normal's 75% quantile
    torch.testing.assert_close(quantile_grid(2), torch.tensor([[-q, q], [q, q], [-q, -q], [q, -q]]))
    assert quantile_grid(20).mean(0).abs().max() < 1e-6 and quantile_grid(20).shape == (400, 2)


def test_a_hole_is_an_image_the_judge_cannot_place():
    from vaectl.judge import judge_images

    def holes(classifier, images, threshold):
        return judge_images(classifier, images, threshold)["unrecognised"]

    judge = torch.nn.Linear(784, 10)
    torch.nn.init.zeros_(judge.weight)
    torch.nn.init.zeros_(judge.bias)  # uniform over 10 classes: max-probability 0.1
    images = torch.rand(7, 784)
    assert holes(judge, images, 0.5).tolist() == [1.0] * 7
    with torch.no_grad():
        judge.bias[3] = 10.0  # certain it is a 3
    assert holes(judge, images, 0.5).tolist() == [0.0] * 7


def test_an_image_judged_exactly_at_the_threshold_is_not_a_hole():
    """Holes are max-probability strictly below `hole_threshold`: two classes tied, the rest
    impossible, give max-probability 0.5 exactly (in float32 too)."""
    from vaectl.judge import judge_images

    judge = torch.nn.Linear(784, 10)
    torch.nn.init.zeros_(judge.weight)
    with torch.no_grad():
        judge.bias.copy_(torch.tensor([0.0, 0.0] + [-200.0] * 8))
    judged = judge_images(judge, torch.rand(3, 784), 0.5)
    assert judged["max_prob"].tolist() == [0.5] * 3
    assert judged["unrecognised"].tolist() == [0.0] * 3
    assert judge_images(judge, torch.rand(3, 784), 0.5001)["unrecognised"].tolist() == [1.0] * 3


def test_holes_stage_on_2d_models(trained):
    from vaectl import holes as holes_stage

    params, prepared, root = trained  # TINY trains latent_dim 2
    report = holes_stage.run(
        params.eval,
        prepared,
        root / "models" / "vae",
        root / "models" / "ae",
        root / "models" / "classifier" / "classifier.pt",
        root / "holes.json",
        root / "holes",
        params.tracking.experiment,
    )
    assert set(report["comparison"]) == {
        "grid.unrecognised",
        "samples.unrecognised",
        "standard_normal.unrecognised",
    }
    for c in report["comparison"].values():
        assert 0 <= c["vae_ci"][0] <= c["vae"] <= c["vae_ci"][1] <= 1
        assert c["units"][0] == (
            params.eval.hole_grid**2
            if c is report["comparison"]["grid.unrecognised"]
            else params.eval.generated
        )
    assert sorted(p.name for p in (root / "holes").iterdir()) == ["latents_2d.png", "manifold_2d.png"]
    assert json.loads((root / "holes.json").read_text()) == report


def test_holes_refuses_models_that_are_not_2d(trained, tmp_path):
    from vaectl import holes as holes_stage

    params, prepared, root = trained
    wide = train_stage.with_latent_dim(params, "vae", 3)
    train_stage.run("vae", wide, prepared, tmp_path / "vae3", tmp_path / "c.json")
    with pytest.raises(UserError, match="needs latent_dim 2; the vae in .* has 3"):
        holes_stage.run(
            params.eval,
            prepared,
            tmp_path / "vae3",
            root / "models" / "ae",
            root / "models" / "classifier" / "classifier.pt",
            tmp_path / "h.json",
            tmp_path / "h",
            params.tracking.experiment,
        )


def test_iw_progress_reports_every_tenth_once_the_pass_takes_a_while(monkeypatch):
    """Quiet for a quick pass; past 5 s, a line per tenth of the images with the time left."""
    clock = iter([0.0, 1.0, 2.0] + [10.0 * i for i in range(3, 12)])
    monkeypatch.setattr(evaluate_stage.time, "perf_counter", lambda: next(clock))
    lines = []
    progress = evaluate_stage.ImageProgress("evaluate: vae:", 1000, lines.append)
    for done in range(100, 1001, 100):
        progress(done)
    assert lines[0] == "evaluate: vae: 300/1000 images, 30 s, about 70 s left"
    assert lines[-1] == "evaluate: vae: 900/1000 images, 90 s, about 10 s left"
    assert len(lines) == 7  # 300..900: not the first two (under 5 s), not the end


def zeroed(path):
    """The checkpoint at `path` with every weight set to zero: a loadable file nobody trained."""
    state = torch.load(path, weights_only=True)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, path)


def swap(a, b):
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)


FORGERIES = {  # what someone able to write the workspace might leave there, and the refusal
    "other weights in best.pt": (
        lambda m: zeroed(m / "vae" / "best.pt"),
        r"vae/best.pt \(sha256 .*\) is not what any `vaectl train` run of vae",
    ),
    "the VAE's and the AE's best.pt swapped": (
        lambda m: swap(m / "vae" / "best.pt", m / "ae" / "best.pt"),
        r"vae/best.pt is a 'ae' checkpoint, not a 'vae' one",
    ),
    "last.pt copied over best.pt": (
        lambda m: shutil.copyfile(m / "vae" / "last.pt", m / "vae" / "best.pt"),
        r"vae/best.pt \(sha256 .*\) is not what any `vaectl train` run",
    ),
    "an edited training summary": (
        lambda m: (m / "ae" / "summary.json").write_text('{"best_val_loss": 1.0}'),
        r"ae/summary.json .* is not what MLflow run \w+ of `vaectl train`",
    ),
    "the judge's weights zeroed": (
        lambda m: zeroed(m / "classifier" / "classifier.pt"),
        r"classifier.pt \(sha256 .*\) is not what any `vaectl classifier` run",
    ),
    "training curves that are not JSON": (
        lambda m: (m.parent / "reports" / "curves" / "vae.json").write_text("{"),
        r"curves/vae.json .* is not what MLflow run \w+ of `vaectl train`",
    ),
}


def evaluated_reports(root):
    """Every file evaluate wrote under reports/ (the training curves are train's)."""
    return {
        p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file() and "curves" not in p.parts
    }


@pytest.mark.parametrize("forgery", FORGERIES)
def test_evaluate_refuses_inputs_their_writers_did_not_record_and_keeps_its_reports(trained, forgery):
    params, prepared, root = trained
    evaluate(params, prepared, root)
    before = evaluated_reports(root)
    plant, refusal = FORGERIES[forgery]
    plant(root / "models")
    with pytest.raises(UserError, match=refusal):
        evaluate(params, prepared, root)
    assert evaluated_reports(root) == before
    assert not [p for p in (root / "reports").iterdir() if p.name.endswith(".tmp")]


def test_evaluate_refuses_a_model_folder_that_training_holds(trained):
    from vaectl.files import exclusive_dir

    params, prepared, root = trained
    with (
        exclusive_dir(root / "models" / "ae", "`vaectl train`"),
        pytest.raises(UserError, match=r"models/ae is being written by `vaectl train`; wait for it"),
    ):
        evaluate(params, prepared, root)


def test_sigterm_during_evaluate_keeps_the_previous_reports_and_ends_the_run_killed(trained):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from vaectl import tracking

    params, prepared, root = trained
    evaluate(params, prepared, root)
    before = evaluated_reports(root)
    slow = {**TINY_EVAL, "eval": {**TINY_EVAL["eval"], "iw_samples": 5000}}  # time to stop it
    (root / "params.yaml").write_text(yaml.safe_dump(slow))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaectl",
            "evaluate",
            "--prepared",
            str(prepared),
            "--reports",
            str(root / "reports"),
        ],
        cwd=root,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list((root / "reports").glob(".metrics.json.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the IW-NLL pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: `vaectl evaluate` stopped")
    assert evaluated_reports(root) == before
    assert not [p for p in (root / "reports").iterdir() if p.name.endswith(".tmp")]
    assert tracking.find_runs("vaectl", "tags.`vaectl.kind` = 'evaluate'")[0].info.status == "KILLED"


def test_ood_stage_scores_every_set_and_writes_report_and_figures(trained):
    """The tiny models, the test split against the four shifts: every score's detection
    metrics with intervals (percentile ones: at 40 images AUPRC's can miss its value), the
    VAE-vs-AE verdicts, two figures, one MLflow run. Uniform noise is far from any digit:
    the AE's reconstruction error must flag it."""
    from vaectl import ood as ood_stage
    from vaectl import tracking

    params, prepared, root = trained  # TINY_EVAL: 40 images per set, k = 5
    report = ood_stage.run(
        params.ood,
        params.eval,
        [],
        prepared,
        root / "models" / "vae",
        root / "models" / "ae",
        root / "ood.json",
        root / "ood",
        params.tracking.experiment,
    )
    assert list(report["sets"]) == ["noise", "constant", "inverted", "flipped"]
    for found in report["sets"].values():
        assert found["images"] == min(40, report["normal"]["images"])
        assert set(found["scores"]) == set(ood_stage.SCORE_NAMES)
        for metrics in found["scores"].values():
            for m in metrics.values():
                assert 0 <= m["ci"][0] <= m["ci"][1] <= 1 and 0 <= m["value"] <= 1
        assert set(found["comparisons"]) == {f"vae.{s} - ae.reconstruction" for s in ood_stage.VAE_SCORES}
    assert report["sets"]["noise"]["scores"]["ae.reconstruction"]["auroc"]["value"] > 0.9
    assert sorted(p.name for p in (root / "ood").iterdir()) == ["roc.png", "scores.png"]
    assert json.loads((root / "ood.json").read_text()) == report
    runs = tracking.find_runs(params.tracking.experiment, "tags.`vaectl.kind` = 'ood'")
    assert len(runs) == 1 and runs[0].data.metrics["noise.ae.reconstruction.auroc"] > 0.9


def test_shifted_sets_are_what_their_names_say():
    from vaectl.ood import shifted

    pixels = torch.rand(6, 784, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(shifted(pixels, "inverted", 4, gen), 1 - pixels[:4])
    upside_down = shifted(pixels, "flipped", 6, gen).reshape(6, 28, 28)
    assert torch.equal(upside_down[:, 0], pixels.reshape(6, 28, 28)[:, 27])
    constant = shifted(pixels, "constant", 6, gen)
    assert (constant == constant[:, :1]).all() and constant[:, 0].unique().numel() == 6
    noise = shifted(pixels, "noise", 3, gen)
    assert noise.shape == (3, 784) and 0.4 < float(noise.mean()) < 0.6


def test_the_shifts_ood_makes_are_the_ones_params_accept():
    import typing

    from vaectl.ood import CATALOGUE, SHIFTS
    from vaectl.params import OodParams

    hints = typing.get_type_hints(OodParams)
    assert typing.get_args(typing.get_args(hints["shifts"])[0]) == SHIFTS
    assert set(typing.get_args(hints["other"])) - {"none"} | set(SHIFTS) == set(CATALOGUE)


def sequential_reference(model, x, params, generator) -> dict[str, np.ndarray]:
    """The likelihoods as one process computes them, written out: batch after batch, every
    draw from the one generator (the ELBO's, then the IW-NLL's)."""
    from vaectl.objectives import expected_bernoulli_nll, iwae_log_likelihood, kl_to_prior

    parts: dict[str, list] = {"neg_elbo": [], "iw_nll": []}
    for start in range(0, len(x), params.batch_size):
        xb = x[start : start + params.batch_size]
        mu, logvar = model.encode(xb)
        recon = expected_bernoulli_nll(model, xb, evaluate_stage.ELBO_SAMPLES, generator)
        kl = kl_to_prior(model.prior_components(), mu, logvar, evaluate_stage.ELBO_SAMPLES, generator)
        parts["neg_elbo"].append((recon + kl).double())
        parts["iw_nll"].append(
            -iwae_log_likelihood(model, xb, params.iw_samples, params.iw_chunk, generator).double()
        )
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


@pytest.mark.parametrize("pseudo_inputs", [0, 3], ids=["normal-prior", "vampprior"])
@torch.no_grad()
def test_likelihoods_are_the_same_bytes_on_1_2_and_3_workers(pseudo_inputs):
    """7 batches shared out over 1, 2 and 3 spawned processes give the bytes of one process
    drawing batch after batch from one generator, and leave the generator where it leaves it
    (the samples drawn next depend on it). The VampPrior's KL makes draws of its own. Seen red
    with a batch started from the seed's state (nothing replayed), with the KL's draws left
    out of the replay, and with a generator kept per worker."""
    from vaectl.models import AutoEncoder
    from vaectl.params import ModelParams

    torch.manual_seed(0)
    model = AutoEncoder(ModelParams(hidden=[16], pseudo_inputs=pseudo_inputs), 3, True).eval()
    params = parse_params({"eval": {"iw_samples": 30, "iw_chunk": 7, "batch_size": 10}}).eval
    pixels = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    x = torch.bernoulli(pixels, generator=torch.Generator().manual_seed(2))
    reference_generator = torch.Generator().manual_seed(0)
    reference = sequential_reference(model, x, params, reference_generator)
    after = torch.randn(4, generator=reference_generator)
    runs = []
    for workers in (1, 2, 3):
        generator = torch.Generator().manual_seed(0)
        metrics, latents, units = evaluate_stage.likelihood_metrics(
            model, x, pixels, params, generator, workers=workers
        )
        for name, values in reference.items():
            assert units[name].tobytes() == values.tobytes(), (workers, name)
        assert torch.equal(torch.randn(4, generator=generator), after)
        runs.append((json.dumps([metrics, latents]), {k: v.tobytes() for k, v in units.items()}))
    assert runs[1] == runs[0] and runs[2] == runs[0]
