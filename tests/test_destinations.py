"""The destination rule (docs/reliability.md, "Destinations"): a command replaces only a plain
file or a folder whose every file it writes again (or that it recognises as its own earlier
output); never a link, a device, a FIFO, the working folder, or a user's file."""

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vaectl import UserError, registry
from vaectl.files import atomic_path, check_destination
from vaectl.layout import LAYOUT

SRC = Path(__file__).resolve().parents[1] / "src" / "vaectl"


def write_folder(dest: Path, names: list[str]) -> None:
    with atomic_path(dest) as staged:
        staged.mkdir()
        for name in names:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_text(name)


def test_a_folder_is_replaced_when_the_new_output_writes_every_file_again(tmp_path):
    write_folder(tmp_path / "out", ["a.png", "sub/b.png"])
    write_folder(tmp_path / "out", ["a.png", "sub/b.png", "c.png"])
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["a.png", "b.png", "c.png"]


def test_a_folder_holding_a_users_file_is_refused_and_the_file_kept(tmp_path):
    write_folder(tmp_path / "out", ["a.png"])
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"out holds notes.txt, which this command did not write"):
        write_folder(tmp_path / "out", ["a.png"])
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


@pytest.mark.parametrize("make", ["fifo", "symlink", "dangling", "link-inside"])
def test_links_and_fifos_are_never_replaced(tmp_path, make):
    dest = tmp_path / "out.json"
    target = tmp_path / "secret"
    target.write_text("keep")
    if make == "fifo":
        os.mkfifo(dest)
    elif make == "symlink":
        dest.symlink_to(target)
    elif make == "dangling":
        dest.symlink_to(tmp_path / "nowhere")
    else:
        dest.mkdir()
        (dest / "a.png").symlink_to(target)
    with pytest.raises(UserError, match="symbolic link|a FIFO|not a plain file"):
        if make == "link-inside":
            write_folder(dest, ["a.png"])
        else:
            with atomic_path(dest) as staged:
                staged.write_text("{}")
    assert target.read_text() == "keep" and (dest.is_symlink() or dest.exists())


def test_a_character_device_is_refused_before_any_work():
    with pytest.raises(UserError, match="/dev/null is a character device"):
        check_destination(Path("/dev/null"))


@pytest.mark.parametrize("name", [".", "", "..", "/"])
def test_the_working_folder_and_those_above_it_are_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="working folder"):
        check_destination(Path(name))
    assert (tmp_path / "mine.txt").exists()


def test_a_file_and_a_folder_do_not_replace_each_other(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UserError, match="is a file, and this output is a folder"):
        write_folder(tmp_path / "out", ["a.png"])
    assert (tmp_path / "out").read_text() == "a file"


def test_a_killed_writers_staging_folder_goes_with_the_next_write_a_live_ones_stays(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.json.{dead.pid}.abc.tmp"
    live = tmp_path / f".out.json.{os.getpid()}.def.tmp"
    stale.mkdir()
    live.mkdir()
    with atomic_path(tmp_path / "out.json") as staged:
        staged.write_text("{}")
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("name", ["../../escape", "/abs/path", "", "a/b", "..", ".hidden", "x" * 65])
def test_a_model_name_never_leaves_models(name):
    with pytest.raises(UserError, match="model name"):
        LAYOUT.model(name)


def test_train_refuses_a_model_name_outside_models_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "train", "--model", "../../escape", "--kind", "ae"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "model name '../../escape'" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_pull_refuses_a_folder_it_did_not_write_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "download_verified", lambda *a: pytest.fail("downloaded"))
    dest = tmp_path / "d"
    (dest / "sub").mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="d holds notes.txt and no pulled.json"):
        registry.pull("vae-mnist@champion", dest)
    monkeypatch.chdir(tmp_path)
    for here in (Path("."), Path(""), tmp_path):
        with pytest.raises(UserError, match="working folder"):
            registry.pull("vae-mnist@champion", here)
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "sub").is_dir()


def test_pull_replaces_its_own_earlier_bundle_but_not_a_file_added_to_it(tmp_path):
    dest = tmp_path / "d"
    (dest / "artifacts").mkdir(parents=True)
    (dest / "MLmodel").write_text("m")
    (dest / "artifacts" / "x.pt2").write_text("x")
    listing = {"files": {"MLmodel": "0", "artifacts/x.pt2": "0"}}
    (dest / registry.PULLED).write_text(json.dumps(listing))
    assert registry.earlier_pull(dest) is None
    (dest / "artifacts" / "notes.txt").write_text("mine")
    assert registry.earlier_pull(dest) == "artifacts/notes.txt"
    (tmp_path / "empty").mkdir()
    assert registry.earlier_pull(tmp_path / "empty") is None


@pytest.mark.parametrize("make", ["fifo", "symlink", "foreign", "dir"])
def test_predict_refuses_an_output_that_is_not_its_own_before_reading_anything(tmp_path, make):
    output = tmp_path / "out.npz"
    if make == "fifo":
        os.mkfifo(output)
    elif make == "symlink":
        output.symlink_to(tmp_path / "target")
    elif make == "foreign":
        output.write_text("a user's notes")
    else:
        output.mkdir()
    with pytest.raises(UserError, match="FIFO|symbolic link|did not write|directory"):
        registry.predict("vae-mnist@champion", tmp_path / "missing.npz", output, "reconstruct", 1, 0)
    assert output.is_symlink() or output.exists()


def test_predict_recognises_its_own_earlier_output(tmp_path):
    ours, other = tmp_path / "ours.npz", tmp_path / "other.npz"
    np.savez(ours, output=np.zeros(1), mode=np.array("encode"), model=np.array("vae/1"))
    np.savez(other, x=np.zeros(1))
    assert registry.earlier_prediction(ours) is None
    assert registry.earlier_prediction(other) is not None
    assert zipfile.is_zipfile(other)


def test_only_files_py_replaces_or_deletes_anything():
    """Every output goes through files.atomic_path (and so through the destination rule): no
    other module renames, moves or deletes a folder itself."""
    pattern = re.compile(r"\b(shutil\.rmtree|shutil\.move|os\.replace|os\.rename|os\.remove|\.rmdir\(\))")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "files.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_sigterm_in_a_staged_write_leaves_no_staging_folder(tmp_path):
    code = (
        "import os, signal, time; from pathlib import Path; from vaectl.files import atomic_path\n"
        "signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))\n"
        f"with atomic_path(Path({str(tmp_path / 'out')!r})) as s:\n"
        "    s.mkdir(); print('staged', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staged"
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []


class Stopped(Exception):
    pass


def test_a_signal_between_the_two_renames_of_a_folder_swap_waits_for_both(tmp_path, monkeypatch):
    """The old folder is moved aside before the new one moves in: a SIGTERM landing between the
    two renames must not leave neither in place (the staging folder, old one inside, is removed)."""
    write_folder(tmp_path / "out", ["a.txt"])
    renames = []

    def replace_then_signal(src, dst):
        os.rename(src, dst)
        renames.append(dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(signum, frame):
        raise Stopped

    monkeypatch.setattr(os, "replace", replace_then_signal)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            write_folder(tmp_path / "out", ["a.txt", "b.txt"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(renames) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_second_rename_of_a_folder_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    write_folder(tmp_path / "out", ["a.txt"])
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="disk gone"):
        write_folder(tmp_path / "out", ["a.txt", "b.txt"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_commands_temporary_folder_goes_with_the_next_one(tmp_path, monkeypatch):
    import tempfile

    from vaectl.files import temporary_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f"vaectl-serve-{dead.pid}-x", tmp_path / f"vaectl-code-{os.getpid()}-y"
    other = tmp_path / "vaectl-notes"  # not named by temporary_dir: never touched
    for folder in (stale, live, other):
        folder.mkdir()
    with temporary_dir("vaectl-pull-") as tmp:
        assert Path(tmp).name.startswith(f"vaectl-pull-{os.getpid()}-")
    assert not stale.exists() and live.exists() and other.exists() and not Path(tmp).exists()


def _plant(dest: Path, what: str) -> None:
    if what == "fifo":
        os.mkfifo(dest)
    elif what == "link":
        dest.symlink_to(dest.parent / "elsewhere")
    elif what == "file":  # where a folder goes
        dest.write_text("mine")
    else:  # a folder of the user's
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")


REFUSALS = {
    "fifo": "is a FIFO",
    "link": "symbolic link",
    "users-folder": "did not write",
    "file": "is a file, and this output is a folder",
}


def refusal(tmp_path: Path, args: list[str]) -> str:
    """stderr of `vaectl ARGS` run in `tmp_path` on its own store, which must fail with one
    `error:` line and no traceback."""
    (tmp_path / "params.yaml").write_text("{}\n")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "VAECTL_ROOT": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    errors = [
        line for line in out.stderr.splitlines() if "mlflow.store.db.utils" not in line
    ]  # store creation
    assert len(errors) == 1 and errors[0].startswith("error: "), out.stderr
    return out.stderr


@pytest.mark.parametrize("what", ["fifo", "link", "users-folder"])
@pytest.mark.parametrize(
    "command, option",
    [("fetch", "--out"), ("validate", "--docs"), ("validate", "--report")],
)
def test_each_stage_refuses_a_destination_that_is_not_its_own_in_one_line(
    tmp_path, prepared, command, option, what
):
    """The class, through the CLI as a user runs it: fetch and validate write folders and
    files; a FIFO, a link or a folder of the user's at the destination is refused and kept."""
    dest = tmp_path / "dest"
    _plant(dest, what)
    args = [command, option, str(dest)] + (["--prepared", str(prepared)] if command == "validate" else [])
    expected = REFUSALS[what]
    if option == "--report" and what == "users-folder":
        expected = "is a folder, and this output is a file"
    assert expected in refusal(tmp_path, args)
    assert dest.is_symlink() or dest.exists()
    assert what != "users-folder" or (dest / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "command, option, what",
    [
        ("ood", "--report", "fifo"),
        ("ood", "--figures", "file"),
        ("holes", "--report", "link"),
        ("holes", "--figures", "fifo"),
        ("evaluate", "--reports", "fifo"),  # at reports/metrics.json
    ],
)
def test_stages_that_score_models_refuse_a_destination_before_loading_any(
    tmp_path, prepared, command, option, what
):
    """No model was trained here: a refusal naming the destination shows it came first, not
    after the models were loaded and the scoring done."""
    dest = tmp_path / "dest"
    if command == "evaluate":
        dest.mkdir()
        _plant(dest / "metrics.json", what)
    else:
        _plant(dest, what)
    assert REFUSALS[what] in refusal(tmp_path, [command, option, str(dest), "--prepared", str(prepared)])
    assert dest.is_symlink() or dest.exists()


def test_a_folder_whose_outputs_vary_with_the_params_is_claimed_by_its_names(tmp_path):
    """reports/study holds latent_dim.png from a grid with two latent sizes; a grid with one
    writes no such figure and still replaces the folder, but never a file of the user's."""
    from vaectl.files import only_files

    claim = only_files({"study.json", "study.md", "beta.png", "latent_dim.png"})
    write_folder(tmp_path / "study", ["study.json", "study.md", "beta.png", "latent_dim.png"])
    with atomic_path(tmp_path / "study", claim=claim) as staged:
        staged.mkdir()
        (staged / "study.json").write_text("{}")
    assert [p.name for p in (tmp_path / "study").iterdir()] == ["study.json"]
    (tmp_path / "study" / "holiday.png").write_text("mine")
    with pytest.raises(UserError, match="holds holiday.png"):
        with atomic_path(tmp_path / "study", claim=claim) as staged:
            pytest.fail("refused before any work")
