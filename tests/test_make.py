"""Makefile targets that touch the working tree."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_make_clean_removes_only_what_the_pipeline_rebuilds(tmp_path):
    """Outputs git ignores go; every tracked file (the committed reports and study results)
    and a file of the user's stay, so `git status` shows only the user's file."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=tmp_path, check=True)
    outputs = ["models/vae/best.pt", "reports/figures/samples.png", "reports/index.html", "mlflow.db"]
    outputs += ["data/prepared/train.npz", "mlruns/artifacts/1/a.txt", "export/vae/reconstruct.onnx"]
    for name in [*outputs, "reports/my-notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert [name for name in outputs if (tmp_path / name).exists()] == []
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True)
    assert status.stdout == "?? reports/my-notes.txt\n"
