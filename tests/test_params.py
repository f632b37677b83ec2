import dataclasses
from pathlib import Path

import pytest

from vaectl import UserError
from vaectl.params import Params, flatten, load_params, parse_params


def test_repo_params_file_loads():
    assert isinstance(load_params("params.yaml"), Params)


def test_defaults_and_int_to_float():
    params = parse_params({"train": {"vae": {"lr": 1}}})
    assert params.train.vae.lr == 1.0 and params.data.name == "mnist-5k"


@pytest.mark.parametrize("raw, message", [
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
])
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
        "fashion-mnist", "gated-mlp", [-6.0, 2.0])
    assert params.train.vae.latent_dim == 40 and params.train.vae.grad_norm
    assert params.numerics.mode == "fast" and params.eval.iw_precision == "bfloat16"
    # untouched groups and keys keep params.yaml's values
    assert params.validate == parse_params({}).validate
    assert dataclasses.replace(params.eval, iw_precision="float32") == parse_params({}).eval
    copy = tmp_path / "params.yaml"
    copy.write_text((root / "params.yaml").read_text())
    apply_overrides(str(copy), overrides)
    assert load_params(copy) == params


def test_a_bad_overlay_is_one_line(tmp_path):
    from vaectl.params import apply_overlay

    base = tmp_path / "params.yaml"
    base.write_text("model: {hidden: [8]}\n")
    for text, message in [("", "needs at least one key"),
                          ("model: {hiden: [4]}", "unknown key 'model.hiden'"),
                          ("data: {mirrors: ['a b']}", "cannot be written as a `dvc exp run -S`")]:
        (tmp_path / "o.yaml").write_text(text)
        with pytest.raises(UserError, match=message):
            apply_overlay(base, tmp_path / "o.yaml")


def _billion_laughs(levels: int) -> str:
    """Ten lines that expand to 10**levels strings."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message", [
    ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "invalid YAML at line 1, column 35: nested deeper than 32"),
    (_billion_laughs(9), "invalid YAML at line 5, column .*: more than 100000 values once aliases"),
    ("train:\n  vae: {epochs: 1}\neval: {}\ntrain:\n  ae: {epochs: 2}\n",
     "invalid YAML at line 4, column 1: duplicate key 'train'"),
    ("train: {vae: {epochs: 1, epochs: 2}}\n", "line 1, column 26: duplicate key 'epochs'"),
])
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
