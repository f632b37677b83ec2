"""vaectl repro's scheduler on a toy DVC project: independent stages really run at once, a
stage waits for the stale stages upstream, a failure stops what has not started. That the
real pipeline writes the same bytes at 2 jobs as `dvc repro` at one is in test_pipeline.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaectl import UserError, pipeline

pytestmark = pytest.mark.e2e

# a and b each wait (up to 20 s) for the other to have started: one at a time, both fail
MEET = (
    "touch {me}.started; for i in $(seq 100); do [ -e {other}.started ] && break; sleep 0.2; done; "
    "[ -e {other}.started ] && echo {me} > {me}.txt"
)


def toy_project(root: Path, a_cmd: str) -> None:
    stages = {
        "a": {"cmd": a_cmd, "deps": ["in.txt"], "outs": ["a.txt"]},
        "b": {"cmd": MEET.format(me="b", other="a"), "deps": ["in.txt"], "outs": ["b.txt"]},
        "c": {"cmd": "cat a.txt b.txt > c.txt", "deps": ["a.txt", "b.txt"], "outs": ["c.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "in.txt").write_text("x\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=env)


def test_independent_stages_run_at_once_and_the_rest_waits(tmp_path, monkeypatch):
    toy_project(tmp_path, MEET.format(me="a", other="b"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert pipeline.stale_stages(tmp_path) == (["a", "b", "c"], {"a": set(), "b": set(), "c": {"a", "b"}})
    lines: list[str] = []
    done = pipeline.reproduce(tmp_path, jobs=2, echo=lines.append)
    assert sorted(done["stages"][:2]) == ["a", "b"] and done["stages"][2] == "c"
    assert (tmp_path / "c.txt").read_text() == "a\nb\n"
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"a", "b", "c"}
    assert pipeline.reproduce(tmp_path, jobs=2, echo=lines.append)["stages"] == []
    (tmp_path / "b.txt").unlink()  # b is stale again, and c downstream of it; a is not
    assert pipeline.stale_stages(tmp_path) == (["b", "c"], {"b": set(), "c": {"b"}})


def test_one_job_runs_one_stage_at_a_time(tmp_path, monkeypatch):
    toy_project(tmp_path, MEET.format(me="a", other="b"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(
        UserError, match=r"^stage a failed .*; 0 stages finished and are in dvc.lock, 2 did not start$"
    ):
        pipeline.reproduce(tmp_path, jobs=1, echo=lambda line: None)


def test_a_failed_stage_is_named_and_nothing_downstream_starts(tmp_path, monkeypatch):
    toy_project(tmp_path, "exit 3")
    (tmp_path / "a.started").touch()  # b needs no partner
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    lines: list[str] = []
    with pytest.raises(UserError) as failed:
        pipeline.reproduce(tmp_path, jobs=2, echo=lines.append)
    assert str(failed.value) == (
        "stage a failed (its output is above, each line starting 'a: '); 1 stages finished "
        "and are in dvc.lock, 1 did not start"
    )
    assert not (tmp_path / "c.txt").exists()
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"b"}
    assert any(line.startswith("a: ") for line in lines)  # each stage's output, named


def test_outside_a_dvc_project_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "repro"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: vaectl repro: ") and len(out.stderr.strip().splitlines()) == 1


def test_a_dvc_yaml_dvc_cannot_read_is_one_line(tmp_path, monkeypatch):
    toy_project(tmp_path, "true")
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    cmd: [unclosed\n")
    with pytest.raises(UserError, match=r"^vaectl repro: .*dvc.yaml"):
        pipeline.stale_stages(tmp_path)
