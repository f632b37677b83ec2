"""How many worker processes share per-image work, and what happens when one is stopped (the
bytes on 1, 2 and 3 workers: tests/test_evaluate.py and tests/test_novelty.py)."""

import os
import signal
import time

import pytest

from vaectl import UserError, pipeline, shards


@pytest.mark.parametrize("raw", ["0", "-1", "two", "65", "1.5"])
def test_a_worker_count_that_is_not_1_to_64_is_refused_in_one_line(monkeypatch, raw):
    monkeypatch.setenv(shards.WORKERS_ENV, raw)
    with pytest.raises(
        UserError, match=f"VAECTL_WORKERS={raw!r}: expected a whole number of processes from 1 to 64"
    ):
        shards.worker_count(1)


def test_workers_default_to_one_a_core_for_the_threads_each_uses(monkeypatch):
    monkeypatch.delenv(shards.WORKERS_ENV, raising=False)
    monkeypatch.setattr(shards, "cores", lambda: 8)
    assert [shards.worker_count(t) for t in (1, 2, 3, 16, 0)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv(shards.WORKERS_ENV, "3")
    assert shards.worker_count(1) == 3


def test_stages_run_side_by_side_share_the_cores_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(shards, "cores", lambda: 8)
    for jobs, threads, expected in ((2, 1, "4"), (8, 1, "1"), (3, 2, "1"), (1, 0, "1")):
        monkeypatch.delenv(shards.WORKERS_ENV, raising=False)
        pipeline.share_cores(jobs, threads)
        assert os.environ[shards.WORKERS_ENV] == expected
    pipeline.share_cores(8, 1)  # set already (by the user): kept
    assert os.environ[shards.WORKERS_ENV] == "1"


def nap(shared, seconds):
    time.sleep(seconds)
    return os.getpid()


def failing(shared, item):
    if item == 2:
        raise ValueError("batch 2 is bad")
    return item * shared


def test_results_come_in_order_and_a_workers_error_reaches_the_caller():
    assert shards.map_items(failing, 10, [0, 1, 3, 4], 2) == [0, 10, 30, 40]
    with pytest.raises(ValueError, match="batch 2 is bad"):
        shards.map_items(failing, 10, [0, 1, 2, 3], 2)


def test_an_interrupted_caller_stops_its_workers_at_once():
    """Ctrl-C or SIGTERM (here: raised by the progress callback after the first result) ends
    the workers in hand, not after their 10-minute batches. Seen red (the alarm) without
    the terminate."""

    def interrupt(done):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the workers were waited for"))
    signal.alarm(60)
    try:
        with pytest.raises(KeyboardInterrupt):
            shards.map_items(nap, None, [0, 600, 600, 600], 2, interrupt)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_worker_is_started_only_for_work_worth_its_start_up():
    per = shards.DECODES_PER_WORKER
    assert [shards.useful_workers(4, n) for n in (0, per - 1, per, 3 * per, 40 * per)] == [1, 1, 1, 3, 4]


def test_workers_run_this_code_even_with_another_copy_first_on_the_path(tmp_path, monkeypatch):
    """Loading a registered model puts its code copy (a vaectl without shards.py) first on
    sys.path; workers spawned after that must still import the vaectl this process runs.
    Seen red (BrokenProcessPool: no module named 'vaectl.shards') without _this_code_first."""
    (tmp_path / "vaectl").mkdir()
    (tmp_path / "vaectl" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shards.map_items(failing, 10, [0, 1, 3], 2) == [0, 10, 30]


def suicide(shared, item):
    if item == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def test_a_worker_killed_is_one_line_naming_the_way_around():
    with pytest.raises(UserError, match="a worker process died .* VAECTL_WORKERS=1 computes in this process"):
        shards.map_items(suicide, None, [0, 1, 2], 2)
