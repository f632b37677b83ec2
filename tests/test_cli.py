import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port


def vaectl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaectl", *args], capture_output=True, text=True, cwd=cwd)


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from typer.testing import CliRunner; from vaectl.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = {'torch', 'mlflow', 'great_expectations', 'torchvision', 'pandas'} "
        "& set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "params_text, message",
    [
        ("data:\n  name: cifar10\n", "'data.name' must be one of"),
        ("data:\n  nmae: mnist\n", "unknown key 'data.nmae'"),
        (": : :\n", "invalid YAML"),
    ],
)
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
        "error: data manifest not found: data/prepared/manifest.json (run `vaectl fetch` first)"
    )


def test_unreachable_mirror_lists_what_was_tried(tmp_path):
    (tmp_path / "params.yaml").write_text(
        f"data:\n  name: kmnist\n  mirrors: ['{tmp_path / 'm1'}', 'file:///nonexistent/m2']\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "vaectl", "fetch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "VAECTL_MIRROR": str(tmp_path / "m0"),
            # any network attempt fails fast, online or not
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not fetch train-images-idx3-ubyte.gz for kmnist; tried: ")
    assert line.index("/m0/") < line.index("/m1/") < line.index("/m2/") < line.index("codh.rois")


def test_nproc_forwards_every_option_given_and_the_resume_hint_repeats_them(monkeypatch, tmp_path):
    """Each training process gets the options as given, whatever they are (none is named in
    the forwarding code), but --nproc; an interrupted run's hint repeats them with --resume."""
    from typer.testing import CliRunner

    from vaectl import cli
    from vaectl import train as train_stage
    from vaectl.params import parse_params

    forwarded = {}

    def launched(kind, params, prepared, out_dir, resume, nproc, train_args):
        forwarded.update(kind=kind, latent=params.train.vae.latent_dim, out=out_dir, args=train_args)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_computing", lambda path: parse_params({}))
    monkeypatch.setattr(train_stage, "run_processes", launched)
    given = ["--model", "vae-2d", "--params", "p.yaml", "--prepared", str(tmp_path), "--resume"]
    result = CliRunner().invoke(cli.app, ["train", "--latent-dim", "2", "--nproc", "3", *given])
    assert result.exit_code == 130
    assert forwarded == {
        "kind": "vae",
        "latent": 2,
        "out": Path("models/vae-2d"),
        "args": [*given, "--latent-dim", "2"],
    }  # in the command's order
    hint = f"vaectl train {' '.join(given[:-1])} --nproc 3 --latent-dim 2 --resume`"
    assert hint in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "2"], "--nodes N needs --rendezvous HOST:PORT"),
        (["--rendezvous", "host-a:29400"], "give --nodes N (N > 1) too"),
        (["--nodes", "2", "--rendezvous", "host-a"], "give HOST:PORT"),
        (["--nodes", "2", "--rendezvous", "host-a:99999"], "a port from 1 to 65535"),
        (["--nodes", "2", "--rendezvous", "h:29400", "--resume"], "--resume runs on one host"),
    ],
)
def test_a_several_host_launch_missing_its_meeting_point_is_one_line(monkeypatch, prepared, args, message):
    from typer.testing import CliRunner

    from vaectl import cli
    from vaectl.params import parse_params

    monkeypatch.setattr(cli, "load_computing", lambda path: parse_params({}))
    result = CliRunner().invoke(cli.app, ["train", "--model", "vae", "--prepared", str(prepared), *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "code, filename, line",
    [
        (errno.ENOSPC, None, "error: out/x: No space left on device; free some space or write elsewhere"),
        (errno.EROFS, "/mnt/ro/.prepared.abc.tmp", "error: /mnt/ro: Read-only file system; write elsewhere"),
        (errno.EACCES, "/srv/a.npz", "error: /srv/a.npz: Permission denied; check its permissions"),
        (errno.EDQUOT, "/home/q", "error: /home/q: Disk quota exceeded; free some of your quota"),
    ],
)
def test_a_place_the_os_refuses_is_one_line_naming_it(capsys, code, filename, line):
    import typer

    from vaectl.cli import user_errors

    @user_errors
    def command(out):
        raise OSError(code, os.strerror(code), filename)

    with pytest.raises(typer.Exit) as stopped:
        command(out=Path("out/x"))
    assert stopped.value.exit_code == 1
    assert capsys.readouterr().err.startswith(line)


def test_other_os_errors_still_surface(capsys):
    from vaectl.cli import user_errors

    @user_errors
    def command():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        command()


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A real small or read-only file system, where this machine lets us mount one (root)."""
    path.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs is not permitted here; the in-process cases above still run")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize(
    "options, message", [("size=64k", "No space left on device"), ("ro", "Read-only file system")]
)
def test_fetch_into_a_full_or_read_only_file_system_is_one_line_and_leaves_nothing(
    tmp_path, options, message
):
    (tmp_path / "params.yaml").write_text("{}\n")
    with mounted_tmpfs(tmp_path / "mnt", options) as place:
        result = vaectl("fetch", "--out", str(place / "prepared"), cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert list(place.iterdir()) == []  # the staging folder went too


def test_the_documented_servers_take_different_ports():
    """`make ui`, `make server` and `vaectl serve` can all run at once, in the order the docs
    give them (serve and the server both took 5001: "Address already in use")."""
    import inspect
    import re

    from vaectl.cli import serve

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    ui_port = int(re.search(r"mlflow ui --host \S+ --port (\d+)", makefile).group(1))
    server_port = int(re.search(r"^SERVER_PORT \?= (\d+)", makefile, re.M).group(1))
    serve_port = inspect.signature(serve).parameters["port"].default.default
    assert len({ui_port, server_port, serve_port}) == 3


def test_the_version_is_the_one_pyproject_declares_and_the_changelog_releases():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert vaectl("--version").stdout.strip() == f"vaectl {declared}"
    assert f"\n## {declared} " in (root / "CHANGELOG.md").read_text()  # a released version has its section


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"x" * (17 << 20)])
def test_doctor_refuses_a_lock_that_is_binary_or_too_large_in_one_line(tmp_path, content):
    (tmp_path / "lock.bin").write_bytes(content)
    from vaectl.environment import locked_versions

    with pytest.raises(Exception, match="not a text requirements file|more than a lock file holds"):
        locked_versions(tmp_path / "lock.bin")


def test_doctor_checks_the_tracking_store_and_the_dvc_remote(tmp_path):
    """A server that does not answer is an error naming the store, after the remote's line;
    outside a DVC project, with no store yet, both say so and nothing is an error."""
    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    project, elsewhere, remote = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "remote"
    for place in (project / ".dvc", elsewhere, remote):
        place.mkdir(parents=True)
    for place in (project, elsewhere):
        (place / "params.yaml").write_text("{}\n")
    (project / ".dvc" / "config").write_text(
        f"[core]\n    no_scm = true\n    remote = shared\n['remote \"shared\"']\n    url = {remote}\n"
    )

    def doctor(cwd: Path, **store: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VAECTL_ROOT")}
        command = [sys.executable, "-m", "vaectl", "doctor", "--lock", str(lock)]
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**env, **store})

    refused = doctor(project, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"DVC remote: shared -> {remote}: answers" in refused.stdout
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("error: tracking store: no MLflow tracking server answers at http://127.0.0.1:")
    )
    fine = doctor(elsewhere)
    assert fine.returncode == 0, fine.stderr
    assert f"tracking store: sqlite:///{elsewhere}/mlflow.db: none yet" in fine.stdout
    assert f"DVC remote: none: {elsewhere} is not in a DVC project" in fine.stdout
    assert not (elsewhere / "mlflow.db").exists()


def test_serve_refuses_a_port_out_of_range_before_anything_loads():
    result = vaectl("serve", "--port", "70000")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--port" in result.stderr and "65535" in result.stderr


def test_a_checkpoint_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    import torch

    from vaectl import UserError
    from vaectl.checkpoints import save_checkpoint

    with mounted_tmpfs(tmp_path / "mnt", "size=64k") as place:
        with pytest.raises(
            UserError, match="best.pt: the checkpoint could not be written .* free some space"
        ):
            save_checkpoint(place / "best.pt", {"model": {"w": torch.zeros(100_000)}})
        assert list(place.iterdir()) == []


def test_doctor_names_the_numerics_in_force_in_words(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    root = Path(__file__).resolve().parents[1]
    result = vaectl("doctor", "--lock", str(root / "requirements.lock"), cwd=tmp_path)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("numerics: "))
    assert line.startswith("numerics: portable (params.yaml): torch runs its DEFAULT kernels")
    assert " on 1 thread; " in line
