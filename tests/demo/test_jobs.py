"""The demo's job scheduler: dependencies respected, results by name, a failure named, the same in-process."""

import time
from pathlib import Path

import pytest

from drorae.demo.jobs import Job, run_jobs


def stamp(path: str, name: str, pause: float = 0.0) -> str:
    time.sleep(pause)
    with open(path, "a") as f:
        f.write(name + "\n")
    return name.upper()


def fail(name: str) -> None:
    raise ValueError(f"{name} broke")


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_their_dependencies(tmp_path, workers):
    log = str(tmp_path / "log")
    jobs = [
        Job("c", stamp, (log, "c"), after=("a", "b")),
        Job("a", stamp, (log, "a", 0.3)),
        Job("b", stamp, (log, "b")),
        Job("d", stamp, (log, "d"), after=("c",)),
    ]
    done = run_jobs(jobs, workers, 1, log=lambda _: None)
    assert {k: v[0] for k, v in done.items()} == {"a": "A", "b": "B", "c": "C", "d": "D"}
    order = Path(log).read_text().split()
    assert order.index("c") > max(order.index("a"), order.index("b")) and order[-1] == "d"
    assert all(seconds >= 0 for _, seconds in done.values())


def test_a_failing_job_is_named_and_bad_graphs_are_refused(tmp_path):
    with pytest.raises(RuntimeError, match="demo job 'x' failed: x broke"):
        run_jobs([Job("x", fail, ("x",))], 2, 1, log=lambda _: None)
    with pytest.raises(ValueError, match=r"unknown jobs \['nope'\]"):
        run_jobs([Job("a", stamp, (str(tmp_path / "l"), "a"), after=("nope",))], 1, 1)
    with pytest.raises(RuntimeError, match="wait on each other"):
        run_jobs([Job("a", stamp, ("", "a"), after=("b",)), Job("b", stamp, ("", "b"), after=("a",))], 1, 1)
