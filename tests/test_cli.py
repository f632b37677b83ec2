import subprocess
import sys

import pytest


def vaectl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaectl", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_help_imports_no_heavy_library():
    code = ("import sys; from typer.testing import CliRunner; from vaectl.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = {'torch', 'mlflow', 'great_expectations', 'torchvision', 'pandas'} "
            "& set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("params_text, message", [
    ("data:\n  name: cifar10\n", "'data.name' must be one of"),
    ("data:\n  nmae: mnist\n", "unknown key 'data.nmae'"),
    (": : :\n", "invalid YAML"),
])
def test_bad_params_are_one_clear_line(tmp_path, params_text, message):
    (tmp_path / "params.yaml").write_text(params_text)
    result = vaectl("fetch", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_validate_without_data_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    result = vaectl("validate", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: data manifest not found: data/prepared/manifest.json (run `vaectl fetch` first)")


def test_unreachable_mirror_lists_what_was_tried(tmp_path):
    (tmp_path / "params.yaml").write_text(
        f"data:\n  name: kmnist\n  mirrors: ['{tmp_path / 'm1'}', 'file:///nonexistent/m2']\n")
    result = subprocess.run([sys.executable, "-m", "vaectl", "fetch"], capture_output=True,
                            text=True, cwd=tmp_path, env={
                                "PATH": "/usr/bin:/bin", "VAECTL_MIRROR": str(tmp_path / "m0"),
                                # any network attempt fails fast, online or not
                                "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not fetch train-images-idx3-ubyte.gz for kmnist; tried: ")
    assert line.index("/m0/") < line.index("/m1/") < line.index("/m2/") < line.index("codh.rois")


def test_the_cli_model_choices_are_the_model_kinds():
    from vaectl.cli import MODELS
    from vaectl.models import KINDS

    assert MODELS == KINDS
