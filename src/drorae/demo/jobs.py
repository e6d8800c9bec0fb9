"""Run the demo's independent trainings side by side: a tiny dependency scheduler over worker processes.

The demo's models are small: on 2 cores two single-threaded trainings side by side do about 1.3x the work of one
training on two threads (intra-op parallelism has little to split in a 16-image step). Jobs start as soon as the
jobs they depend on have finished; each worker process uses ``threads`` intra-op threads for every job, so a job's
numbers do not depend on which worker ran it or in what order. With ``workers=1`` everything runs in this process,
in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    name: str
    fn: Callable[..., Any]  # a module-level function (it is pickled to a worker process)
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()  # names of the jobs that must finish first


def resolve_workers(workers: int | None = None) -> tuple[int, int]:
    """(worker processes, threads each): ``workers`` splitting the cores, by default two (one on a single core)."""
    cores = os.cpu_count() or 1
    workers = workers or (2 if cores >= 2 else 1)
    return workers, max(1, cores // workers)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _timed(fn, args, kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def run_jobs(jobs: list[Job], workers: int, threads: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every job once its ``after`` jobs are done; ``{name: (result, seconds)}``. A failing job raises here
    (after the running ones finish), naming the job."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    unknown = {d for j in jobs for d in j.after} - set(names)
    if unknown:
        raise ValueError(f"jobs depend on unknown jobs {sorted(unknown)}")
    done: dict[str, Any] = {}
    if workers <= 1:
        for job in _topological(jobs):
            log(f"[job] {job.name}")
            done[job.name] = _timed(job.fn, job.args, job.kwargs)
        return done
    import multiprocessing

    pending = list(jobs)
    running = {}
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can hang in its first parallel op
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        while pending or running:
            for job in [j for j in pending if all(d in done for d in j.after)]:
                if len(running) >= workers:
                    break
                pending.remove(job)
                log(f"[job] {job.name} started")
                running[pool.submit(_timed, job.fn, job.args, job.kwargs)] = job.name
            if not running:
                raise RuntimeError(f"jobs {[j.name for j in pending]} wait on each other")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    done[name] = future.result()
                except Exception as err:
                    raise RuntimeError(f"demo job {name!r} failed: {err}") from err
                log(f"[job] {name} done ({done[name][1]:.0f} s)")
    return done


def _topological(jobs: list[Job]) -> list[Job]:
    order, seen = [], set()
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(d in seen for d in j.after)]
        if not ready:
            raise RuntimeError(f"jobs {[j.name for j in pending]} wait on each other")
        for job in ready:
            order.append(job)
            seen.add(job.name)
            pending.remove(job)
    return order
