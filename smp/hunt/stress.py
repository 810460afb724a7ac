"""Stress campaigns: many short runs with derived seeds, hunting lock races.

``smp stress CONFIG --runs N --jobs J`` runs N machines, J at a time, each a real ``smp
run`` in its own process group with its own run directory, the seed of run i derived from
the campaign's seed. After each run it reads ``report.json`` and classifies what went
wrong (``smp.hunt.findings``). It stops at the first run with a new (not known) failure unless
told to go on, and prints for each failure the seed, the detector, a one-line summary,
the run directory and one command that reruns exactly that run (the run's own resolved
``config.toml``: same seed, same chaos seed, same fail points).

Exit status: 0 no new failure; 1 a failure (or, with ``--strict``, a known finding); 2
usage. Ctrl-C stops every machine of the campaign and reports what finished.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from hw.seeds import derive_int
from smp.hunt.findings import Failure, classify, load_known


def derive_seed(base: int, i: int) -> int:
    """The seed of run ``i`` of a campaign with seed ``base`` (stable across versions and
    hosts: ``hw.seeds``)."""
    return derive_int(base, "campaign", i) % (2**31 - 1) + 1


@dataclasses.dataclass
class RunOutcome:
    index: int
    seed: int
    run_dir: str
    exit_status: int
    wall_s: float
    failures: list[Failure]
    error: str = ""

    @property
    def new_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.known is None]

    @property
    def known(self) -> list[Failure]:
        return [f for f in self.failures if f.known is not None]


@dataclasses.dataclass
class Campaign:
    config: str | None
    runs: int
    jobs: int = 1
    seed: int = 1
    chaos: str | None = None
    fail_points: Sequence[str] = ()
    overrides: Sequence[str] = ()
    duration: float | None = None
    time_budget: float | None = None
    keep_going: bool = False
    strict: bool = False
    out_dir: str = "runs/stress"
    run_timeout: float = 600.0

    def command(self, seed: int, run_dir: str) -> list[str]:
        cmd = [sys.executable, "-m", "smp.cli", "run"]
        if self.config:
            cmd.append(self.config)
        for o in self.overrides:
            cmd += ["--set", o]
        cmd += ["--set", f"run.seed={seed}"]
        if self.chaos:
            cmd += ["--set", f"debug.chaos={self.chaos}"]
        if self.duration is not None:
            cmd += ["--set", f"run.duration={self.duration}"]
        for fp in self.fail_points:
            cmd += ["--fail-point", fp]
        cmd += ["--run-dir", run_dir, "--quiet"]
        return cmd


class _Procs:
    """The campaign's machines, so that Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def run(self, cmd: list[str], timeout: float) -> int:
        with self.lock:
            if self.stopping:
                return -1
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            self.procs.add(p)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return -9
        finally:
            with self.lock:
                self.procs.discard(p)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                try:
                    os.killpg(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass


def run_campaign(c: Campaign, say: Callable[[str], None],
                 progress: Callable[[int, int, int, float], None]) -> list[RunOutcome]:
    """Run the campaign; ``progress(done, total, failing_runs, runs_per_minute)``."""
    known = load_known()
    os.makedirs(c.out_dir, exist_ok=True)
    procs = _Procs()
    outcomes: list[RunOutcome] = []
    t0 = time.monotonic()
    stop = threading.Event()

    def one(i: int) -> RunOutcome | None:
        if stop.is_set():
            return None
        if c.time_budget is not None and time.monotonic() - t0 > c.time_budget:
            return None
        seed = derive_seed(c.seed, i)
        rdir = os.path.join(c.out_dir, f"run{i:04d}-s{seed}")
        t = time.monotonic()
        status = procs.run(c.command(seed, rdir), c.run_timeout)
        wall = time.monotonic() - t
        if status == -1:
            return None
        try:
            with open(os.path.join(rdir, "report.json")) as f:
                report = json.load(f)
            failures = classify(report, known)
        except (OSError, json.JSONDecodeError) as e:
            if status == 2:
                return RunOutcome(i, seed, rdir, status, wall, [], f"usage error: {e}")
            failures = [Failure("machine", f"no report (exit status {status}): {e}", ())]
        if status not in (0, 1) and not failures:
            failures = [Failure("machine", f"exit status {status}", ())]
        return RunOutcome(i, seed, rdir, status, wall, failures)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(c.jobs, 1))
    try:
        pending = {pool.submit(one, i) for i in range(c.runs)}
        failing = 0
        while pending:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                out = fut.result()
                if out is None:
                    continue
                outcomes.append(out)
                if out.error:
                    say(f"run {out.index}: {out.error}")
                    stop.set()
                    procs.stop()
                bad = out.new_failures or (c.strict and out.known)
                if bad:
                    failing += 1
                    if not c.keep_going:
                        stop.set()
                elapsed = max(time.monotonic() - t0, 1e-6)
                progress(len(outcomes), c.runs, failing, 60.0 * len(outcomes) / elapsed)
    except KeyboardInterrupt:
        stop.set()
        procs.stop()
        say("interrupted: stopping the campaign's machines")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    outcomes.sort(key=lambda o: o.index)
    return outcomes


def rerun_command(out: RunOutcome) -> str:
    return f"smp run {os.path.join(out.run_dir, 'config.toml')}"


def describe(outcomes: list[RunOutcome], strict: bool) -> tuple[list[str], int]:
    """The campaign's closing lines and exit status."""
    lines = []
    status = 0
    known_count: dict[str, int] = {}
    for out in outcomes:
        for f in out.known:
            known_count[f.known or "?"] = known_count.get(f.known or "?", 0) + 1
        shown = out.new_failures + (out.known if strict else [])
        if out.error:
            status = 2
        for f in shown:
            status = max(status, 1)
            tag = f" (known {f.known})" if f.known else ""
            lines.append(f"FAIL seed {out.seed} [{f.detector}]{tag} {f.summary}")
            lines.append(f"     run dir: {out.run_dir}")
            lines.append(f"     rerun:   {rerun_command(out)}")
    clean = sum(1 for o in outcomes if not o.new_failures and not o.error)
    lines.append(f"{len(outcomes)} runs, {clean} without a new failure"
                 + (", known findings: " + ", ".join(f"{k} x{n}" for k, n
                                                     in sorted(known_count.items()))
                    if known_count else ""))
    return lines, status


__all__ = ["Campaign", "RunOutcome", "run_campaign", "describe", "derive_seed"]
