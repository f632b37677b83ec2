import dataclasses
import typing
from pathlib import Path

import pytest

from vaectl import UserError
from vaectl.archs import Arch
from vaectl.params import Params, flatten, load_params, parse_params


def test_repo_params_file_loads():
    assert isinstance(load_params("params.yaml"), Params)


def test_defaults_and_int_to_float():
    params = parse_params({"train": {"vae": {"lr": 1}}})
    assert params.train.vae.lr == 1.0 and params.data.name == "mnist-5k"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dta": {}}, "unknown key 'dta'"),
        ({"train": {"vae": {"latent": 3}}}, "unknown key 'train.vae.latent'"),
        ({"train": {"ae": {"beta": 1.0}}}, "unknown key 'train.ae.beta'"),
        ({"data": {"name": "cifar"}}, "'data.name' must be one of"),
        ({"train": {"vae": {"epochs": "ten"}}}, "'train.vae.epochs' must be int"),
        ({"train": {"vae": {"epochs": True}}}, "'train.vae.epochs' must be int"),
        ({"model": {"hidden": [64, "x"]}}, r"'model.hidden\[1\]' must be int"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction must be in"),
        ({"data": {"seed": -1}}, "data.seed must be >= 0"),
        ({"eval": {"seed": -1}}, "eval.seed must be >= 0"),
        ({"numerics": {"threads": -2, "mode": "fast"}}, "numerics.threads must be >= 0"),
        ({"numerics": {"threads": 0}}, "numerics.mode portable needs numerics.threads >= 1"),
        ({"eval": {"iw_precision": "bfloat16"}}, "numerics.mode portable needs eval.iw_precision: float32"),
        ({"train": {"device": "cuda"}}, "train.device: cuda needs numerics.mode: fast"),
        ({"numerics": {"mode": "exact"}}, "'numerics.mode' must be one of 'portable', 'fast'"),
        ({"model": {"pseudo_inputs": -1}}, "model.pseudo_inputs must be >= 0"),
        ({"model": {"hidden": []}}, "model.hidden needs at least one layer size"),
        ({"eval": {"classifier": {"batch_size": 0}}}, "eval.classifier.batch_size must be >= 1"),
        ({"eval": {"classifier": {"lr": -1}}}, "eval.classifier.lr must be > 0"),
        ({"train": {"vae": {"lr": float("inf")}}}, "'train.vae.lr' must be a finite number"),
        ({"train": {"vae": {"beta": float("nan")}}}, "'train.vae.beta' must be a finite number"),
        ({"registry": {"ae_name": "vae-mnist"}}, "registry.vae_name and ae_name must differ"),
        ({"registry": {"vae_name": "team/vae"}}, r"no '/' or '@'.*got 'team/vae'"),
        ({"registry": {"ae_name": "ae@mnist"}}, r"no '/' or '@'.*'ae@mnist'"),
        ({"registry": {"vae_name": ""}}, "registry.vae_name and ae_name must be 1-100 letters"),
        ({"registry": {"vae_name": "vae mnist"}}, "registry.vae_name and ae_name must be 1-100 letters"),
        ({"registry": {"min_improvement": -1000}}, r"registry.min_improvement must be >= 0"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(UserError, match=message):
        parse_params(raw)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_params(path)


def test_flatten():
    flat = flatten(parse_params({}))
    assert flat["train.vae.latent_dim"] == 20 and flat["data.name"] == "mnist-5k"


def test_params_yaml_spells_out_every_key_with_the_code_defaults():
    """Every default has one meaning: params.yaml (what DVC tracks and users edit) names every
    key, with the value the dataclasses fall back to when a key is left out."""
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    assert set(flatten(raw)) == set(flatten(Params()))
    assert flatten(parse_params(raw)) == flatten(Params())


def test_model_arch_is_read():
    with pytest.raises(UserError, match="'model.arch' must be one of 'mlp'"):
        parse_params({"model": {"arch": "resnet"}})


def test_yaml_error_names_the_line_and_a_directory_is_not_a_params_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  name: mnist\n  seed: [1\n")
    with pytest.raises(UserError, match="invalid YAML at line 4, column 1"):
        load_params(path)
    with pytest.raises(UserError, match=r"params file not found: .* \(a directory\)"):
        load_params(tmp_path)


def test_the_literature_preset_overlays_params_yaml_and_dvc_applies_it_the_same(tmp_path):
    """`vaectl overlay` (for `--params`) and its `-S` flags (for `dvc exp run`, applied here
    with DVC's own override code) give the same checked params."""
    from dvc.utils.hydra import apply_overrides

    from vaectl.params import apply_overlay

    root = Path(__file__).parent.parent
    merged, overrides = apply_overlay(root / "params.yaml", root / "params" / "fashion-literature.yaml")
    params = parse_params(merged)
    assert (params.data.name, params.model.arch, params.model.logvar_clip) == (
        "fashion-mnist",
        "gated-mlp",
        [-6.0, 2.0],
    )
    assert params.train.vae.latent_dim == 40 and params.train.vae.grad_norm
    assert params.numerics.mode == "fast" and params.eval.iw_precision == "bfloat16"
    # untouched groups and keys keep params.yaml's values
    assert params.validate == parse_params({}).validate
    assert dataclasses.replace(params.eval, iw_precision="float32") == parse_params({}).eval
    copy = tmp_path / "params.yaml"
    copy.write_text((root / "params.yaml").read_text())
    apply_overrides(str(copy), overrides)
    assert load_params(copy) == params


def test_the_quickstart_preset_shortens_training_and_sampling_only(tmp_path):
    """`make quickstart`'s preset: the same data, models and portable numerics as params.yaml,
    fewer epochs and smaller evaluation samples; DVC's override code applies it the same."""
    from dvc.utils.hydra import apply_overrides

    from vaectl.params import apply_overlay

    root = Path(__file__).parent.parent
    merged, overrides = apply_overlay(root / "params.yaml", root / "params" / "quickstart.yaml")
    params, default = parse_params(merged), load_params(root / "params.yaml")
    assert (params.data, params.model, params.numerics) == (default.data, default.model, default.numerics)
    assert params.train.vae.epochs < default.train.vae.epochs
    assert params.train.ae.epochs < default.train.ae.epochs
    assert params.eval.iw_samples < default.eval.iw_samples
    copy = tmp_path / "params.yaml"
    copy.write_text((root / "params.yaml").read_text())
    apply_overrides(str(copy), overrides)
    assert load_params(copy) == params


def test_a_bad_overlay_is_one_line(tmp_path):
    from vaectl.params import apply_overlay

    base = tmp_path / "params.yaml"
    base.write_text("model: {hidden: [8]}\n")
    for text, message in [
        ("", "needs at least one key"),
        ("model: {hiden: [4]}", "unknown key 'model.hiden'"),
        ("data: {mirrors: ['a b']}", "cannot be written as a `dvc exp run -S`"),
    ]:
        (tmp_path / "o.yaml").write_text(text)
        with pytest.raises(UserError, match=message):
            apply_overlay(base, tmp_path / "o.yaml")


def _billion_laughs(levels: int) -> str:
    """Ten lines that expand to 10**levels strings."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a: " + "[" * 20_000 + "]" * 20_000 + "\n",
            "invalid YAML at line 1, column 35: nested deeper than 32",
        ),
        (_billion_laughs(9), "invalid YAML at line 5, column .*: more than 100000 values once aliases"),
        (
            "train:\n  vae: {epochs: 1}\neval: {}\ntrain:\n  ae: {epochs: 2}\n",
            "invalid YAML at line 4, column 1: duplicate key 'train'",
        ),
        ("train: {vae: {epochs: 1, epochs: 2}}\n", "line 1, column 26: duplicate key 'epochs'"),
    ],
)
def test_a_params_file_past_the_bounds_is_refused_fast_at_its_line(tmp_path, text, message):
    """Deep nesting, an alias bomb and a duplicated key (which yaml.safe_load resolves by
    silently dropping the first block) each get one line, in well under a second."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_params(path)


def test_aliases_that_stay_small_are_fine_and_a_huge_or_binary_file_is_refused(tmp_path):
    from vaectl.params import PARAMS_FILE_MAX_BYTES, read_mapping

    path = tmp_path / "p.yaml"
    path.write_text("a: &x {b: [1, 2]}\nc: *x\n" + _billion_laughs(3))
    assert read_mapping(path)["c"] == {"b": [1, 2]}
    path.write_text("# " + "x" * PARAMS_FILE_MAX_BYTES + "\n")
    with pytest.raises(UserError, match=f"larger than {PARAMS_FILE_MAX_BYTES} bytes"):
        read_mapping(path)
    path.write_bytes(b"\xff\xfe\x00data")
    with pytest.raises(UserError, match="not a text file"):
        read_mapping(path)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"eval": {"iw_samples": 10**9}}, r"eval.iw_samples = 1000000000 is past its cap 100000"),
        ({"eval": {"interp_pairs": 10**9}}, r"eval.interp_pairs = 1000000000 is past its cap 10000"),
        ({"train": {"ae": {"latent_dim": 10**6}}}, r"train.ae.latent_dim = 1000000 is past its cap 1024"),
        ({"model": {"hidden": [64, 10**6]}}, r"model.hidden = 1000000 is past its cap 8192"),
        ({"numerics": {"threads": 10**5, "mode": "fast"}}, r"numerics.threads = 100000 is past its cap 256"),
        ({"train": {"vae": {"seed": 10**23}}}, r"train.vae.seed = 10{23} is past its cap 4294967295"),
        ({"study": {"seeds": [0, 2**32]}}, r"study.seeds = 4294967296 is past its cap 4294967295"),
        ({"eval": {"classifier": {"seed": 2**32}}}, r"eval.classifier.seed = 4294967296 is past"),
        ({"train": {"vae": {"epochs": 10**12}}}, r"train.vae.epochs = 10{12} is past its cap 100000"),
        ({"data": {"mirrors": ["/m"] * 21}}, r"data.mirrors has 21 entries, more than its cap 20"),
        ({"data": {"mirrors": ["/" + "m" * 2000]}}, r"data.mirrors holds a string of 2001 characters"),
        (
            {"study": {"seeds": list(range(20)), "latent_dims": list(range(1, 11))}},
            r"the study's lists make 260 trials, more than 200",
        ),
    ],
)
def test_a_value_past_its_cap_is_refused_naming_key_and_cap(raw, message):
    with pytest.raises(UserError, match=message):
        parse_params(raw)


def test_every_cap_is_reachable_and_the_values_at_the_caps_pass():
    """Each cap pattern names real keys (a renamed key would leave its cap matching nothing)."""
    import fnmatch

    from vaectl.params import CAPS, LIST_CAPS

    keys = flatten(parse_params({}))
    for pattern in [*CAPS, *LIST_CAPS]:
        assert any(fnmatch.fnmatchcase(k, pattern) for k in keys), pattern
    parse_params({"train": {"vae": {"seed": 2**32 - 1, "epochs": 100_000}}, "eval": {"iw_samples": 100_000}})


# every other large computation made small, so that the one a case inflates is the one refused
SMALL_EVAL = {"interp_pairs": 1, "ppl_samples": 1, "interp_steps": 2, "generated": 2, "batch_size": 1}


@pytest.mark.parametrize(
    "raw, what",
    [
        ({"model": {"hidden": [8192] * 5}}, "the VAE's training step"),
        ({"train": {"ae": {"batch_size": 65_536}}, "model": {"hidden": [8192]}}, "the AE's training step"),
        (
            {"model": {"pseudo_inputs": 10_000}, "train": {"vae": {"batch_size": 65_536}}},
            "the VAE's training step",
        ),
        ({"eval": {"batch_size": 10_000, "iw_chunk": 1000}}, "the VAE's likelihood batch"),
        (
            {"eval": {"interp_pairs": 10_000, "ppl_samples": 100, "interp_steps": 100}},
            "the VAE's interpolations",
        ),
        ({"eval": {"generated": 100_000}, "model": {"hidden": [8192, 8192]}}, "the VAE's generated set"),
        ({"eval": {"classifier": {"hidden": [8192] * 16}}}, "the judge's training step"),
        ({"eval": {"batch_size": 1000}, "ood": {"elbo_samples": 10_000}}, "the ood stage's -ELBO batch"),
    ],
)
def test_a_computation_past_the_memory_budget_is_refused_before_it_allocates(raw, what, monkeypatch):
    raw = {**raw, "eval": {**SMALL_EVAL, **raw.get("eval", {})}}
    with pytest.raises(UserError, match=f"{what} would need about .* GiB .* past the 8 GiB budget"):
        parse_params(raw)
    monkeypatch.setenv("VAECTL_MEMORY_BUDGET_GIB", "100000")
    parse_params(raw)
    monkeypatch.setenv("VAECTL_MEMORY_BUDGET_GIB", "lots")
    with pytest.raises(
        UserError, match="VAECTL_MEMORY_BUDGET_GIB must be a positive number of GiB, got 'lots'"
    ):
        parse_params(raw)


ARCH_SIZES = {
    "mlp": [[8], [300, 300], [512, 256, 64]],
    "gated-mlp": [[8], [300, 300], [512, 256, 64]],
    "conv": [[4, 8], [8, 16, 32], [32, 64, 256]],
}


@pytest.mark.parametrize("arch", typing.get_args(Arch))
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_the_parameter_count_estimate_is_exact(arch, kind):
    from vaectl.models import build_model
    from vaectl.params import ModelParams, parameter_count

    for hidden, latent, pseudo in zip(ARCH_SIZES[arch], [2, 40, 20], [0, 7, 0], strict=True):
        model_params = ModelParams(arch=arch, hidden=hidden, pseudo_inputs=pseudo)
        real = sum(w.numel() for w in build_model(kind, model_params, latent).parameters())
        assert parameter_count(kind, model_params, latent) == real


def test_every_bound_is_in_docs_bounds_with_its_value():
    from vaectl.params import (
        CAPS,
        LIST_CAPS,
        MEMORY_BUDGET_ENV,
        MEMORY_BUDGET_GIB,
        PARAMS_FILE_MAX_BYTES,
        PARAMS_MAX_DEPTH,
        PARAMS_MAX_NODES,
        STUDY_MAX_TRIALS,
        TEXT_CAP,
    )

    table = (Path(__file__).parent.parent / "docs" / "bounds.md").read_text()
    rows = [f"| `{k}` | {v:,} |" for k, v in CAPS.items()] + [
        f"| `{k}` entries | {v:,} |" for k, v in LIST_CAPS.items()
    ]
    rows += [
        f"{TEXT_CAP:,} characters",
        f"{STUDY_MAX_TRIALS:,} trials",
        f"{PARAMS_FILE_MAX_BYTES:,} bytes",
        f"{PARAMS_MAX_DEPTH} levels",
        f"{PARAMS_MAX_NODES:,} values",
        f"`{MEMORY_BUDGET_ENV}`",
        f"{MEMORY_BUDGET_GIB:g} GiB",
    ]
    missing = [row for row in rows if row not in table]
    assert not missing, missing


def test_the_bounds_of_predict_serve_and_the_tracking_store_are_in_docs_bounds():
    """docs/bounds.md quotes each bound by value; one changed in the code must change there."""
    import inspect

    from vaectl import cli, registry, tracking
    from vaectl.tracking import serving

    table = (Path(__file__).parent.parent / "docs" / "bounds.md").read_text()
    serve_defaults = {
        name: p.default.default
        for name, p in inspect.signature(cli.serve).parameters.items()
        if name in ("max_body", "max_samples", "max_connections")
    }
    timeouts = {
        name: p.default.default
        for name, p in inspect.signature(cli.serve).parameters.items()
        if name in ("header_timeout", "body_timeout")
    }
    quoted = [
        f"{registry.PREDICT_MAX_ROWS:,} rows (`PREDICT_MAX_ROWS`)",
        f"{registry.PREDICT_BATCH_ROWS:,} (`PREDICT_BATCH_ROWS`)",
        f"{registry.PNG_MAX_BYTES:,} bytes (`PNG_MAX_BYTES`)",
        f"{tracking.SERVER_PROBE_TIMEOUT_S:g} s (`SERVER_PROBE_TIMEOUT_S`)",
        *(
            f"{value} (`{key}`" if key.endswith("RETRIES") else f"{value} s (`{key}`"
            for key, value in tracking.SERVER_WAIT_DEFAULTS.items()
        ),
        f"{serving.KEEP_ALIVE_S} s (`KEEP_ALIVE_S`)",
        f"{serve_defaults['max_body']:,} bytes (`--max-body`)",
        f"{serve_defaults['max_samples']:,} (`--max-samples`)",
        f"{serve_defaults['max_connections']} (`--max-connections`)",
        f"{timeouts['header_timeout']:g} s (`--header-timeout`)",
        f"{timeouts['body_timeout']:g} s (`--body-timeout`)",
    ]
    missing = [row for row in quoted if row not in table]
    assert not missing, missing
