"""Dead and stopped peers: the machine notices within seconds, names who, and leaves no process.

* a CPU killed with SIGKILL ends the run within 2 s with a report that names it and lists
  the locks its threads held (the victim holds the test's mutex when it is killed);
* a CPU stopped with SIGSTOP is reported as unresponsive (the server hears nothing from it,
  not even its bus's PINGs) and the run ends instead of waiting for it; so is one wedged
  with Python's lock held (it runs, but neither its kernel nor its heartbeat thread says
  anything), though one that the host does not run is waited for (test_hardening2);
* a killed server is noticed by every CPU within 2 s (no HEARTBEAT), and each exits.

Each test runs the machine in this process (``run_machine``, its processes are our
children) while a watcher thread acts on what the kernel side tells it through a file in
``tmp_path``: the pid of the CPU process that holds the lock.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from smp.kernel.kern.kern_mutex import MTX_DEF, mtx_init, mtx_lock
from smp.kernel.sys.kstruct import F, KStruct

from smp.run.config import PARAM_BY_KEY

from helpers import bsp_init, describe, kthread, lookup, on_each_cpu, spin_until

pytestmark = [pytest.mark.long, pytest.mark.timeout(60)]

BASE = ["run.duration=3600", "workload.kthreads=0",
        *(["user.procs_per_cpu=0"] if "user.procs_per_cpu" in PARAM_BY_KEY else [])]

struct_hard = KStruct("hardlock", [F("h_mtx", "mtx"), F("h_spare", "int")],
                      doc="the hardening tests' lock")
SYM = "hardlock"
VICTIM = 2


def _make() -> Any:
    t = struct_hard.new()
    mtx_init(t.h_mtx, "hardening mtx", None, MTX_DEF)
    return t


def _holder_sysinits(flag: pathlib.Path, wedge_s: float = 0.0) -> list[Any]:
    """cpu VICTIM takes the mutex, says so (its pid into ``flag``), then computes forever;
    ``wedge_s``: first holds Python's lock for that long (wall s) in a loop of C calls,
    which never gives it up: nothing else in its process runs meanwhile."""
    def start(cpu: int) -> None:
        if cpu != VICTIM:
            return

        def body() -> None:
            t = lookup(SYM, struct_hard)
            mtx_lock(t.h_mtx)
            tmp = flag.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.rename(flag)
            if wedge_s:
                import collections
                import functools
                import itertools
                import operator
                until = time.monotonic() + wedge_s
                collections.deque(itertools.takewhile(functools.partial(operator.gt, until),
                                                      iter(time.monotonic, None)), maxlen=0)
            spin_until(lambda: False, "the end of the world")
        kthread(body, "holder")
    return [bsp_init(SYM, _make), on_each_cpu("holder", start)]


class Watcher(threading.Thread):
    """Waits for ``flag`` (or live.json), then does ``act(info)``; records times."""

    def __init__(self, wait_for: pathlib.Path, act: Any) -> None:
        super().__init__(daemon=True)
        self.path = wait_for
        self.act = act
        self.t_act: float | None = None
        self.error: BaseException | None = None
        self.result: Any = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.path.exists():
                if self.stop.wait(0.02):
                    return
            self.t_act = time.monotonic()
            self.result = self.act(self.path.read_text())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _run_with(run: Any, sets: list[str], sysinits: list[Any], watcher: Watcher) -> Any:
    lines: list[tuple[float, str]] = []
    watcher.start()
    try:
        res = run(sets, sysinits=sysinits, log=lambda s: lines.append((time.monotonic(), s)))
    finally:
        watcher.stop.set()
        watcher.join(10)
    assert watcher.error is None, watcher.error
    assert watcher.t_act is not None, describe(res)
    stops = [t for t, s in lines if s.startswith("stopping:")]
    assert stops, lines
    return res, stops[0] - watcher.t_act


def test_a_killed_cpu_is_named_with_the_locks_its_threads_held(
        run: Any, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "holding"
    w = Watcher(flag, lambda text: os.kill(int(text), signal.SIGKILL) or int(text))
    res, noticed = _run_with(run, ["machine.cpus=3", *BASE], _holder_sysinits(flag), w)
    r = res.report
    pid = w.result
    assert res.exit_status == 1 and not r["ok"], describe(res)
    assert f"cpu{VICTIM} (pid {pid}) died: killed by SIGKILL" in r["reason"], describe(res)
    assert noticed < 2.0, f"noticed after {noticed:.2f} s"
    held = [p for p in r["problems"] if p.startswith(f"cpu{VICTIM}'s threads held:")]
    assert held and "hardening mtx (excl, thread" in held[0], r["problems"]


def test_a_stopped_cpu_is_reported_unresponsive_not_waited_for(
        run: Any, tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "holding"
    w = Watcher(flag, lambda text: os.kill(int(text), signal.SIGSTOP) or int(text))
    res, noticed = _run_with(run, ["machine.cpus=3", *BASE], _holder_sysinits(flag), w)
    r = res.report
    pid = w.result
    assert res.exit_status == 1 and not r["ok"], describe(res)
    assert f"cpu{VICTIM} (pid {pid}) unresponsive" in r["reason"], describe(res)
    assert noticed < 4.0, f"noticed after {noticed:.2f} s"
    assert str(VICTIM) in r["server"].get("unresponsive", {}), r["server"]
    held = [p for p in r["problems"] if p.startswith(f"cpu{VICTIM}'s threads held:")]
    assert held and "hardening mtx" in held[0], r["problems"]
    assert r["cpus"][0]["reported"] and r["cpus"][1]["reported"], describe(res)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_wedged_cpu_is_reported_unresponsive_not_waited_for(
        run: Any, tmp_path: pathlib.Path) -> None:
    """cpu VICTIM holds Python's lock for 8 s (a loop of C calls): its process lives, is
    not stopped and runs, but says nothing at all, not even from its heartbeat thread.
    The server waits only for a CPU that the host does not run (one that has used next to
    no processor time since it fell silent); this one used it, so it is reported at the
    silence's 3 s as before, not excused until it comes back."""
    flag = tmp_path / "holding"
    w = Watcher(flag, int)
    res, noticed = _run_with(run, ["machine.cpus=3", *BASE], _holder_sysinits(flag, 8.0), w)
    r = res.report
    pid = w.result
    assert res.exit_status == 1 and not r["ok"], describe(res)
    assert f"cpu{VICTIM} (pid {pid}) unresponsive" in r["reason"], describe(res)
    assert str(VICTIM) in r["server"].get("unresponsive", {}), r["server"]
    assert str(VICTIM) not in r["server"].get("starved", {}), r["server"]


def test_a_killed_server_is_noticed_by_every_cpu_within_2s(
        run: Any, tmp_path: pathlib.Path) -> None:
    live = tmp_path / "run" / "live.json"
    exits: dict[int, float] = {}

    def kill_server(text: str) -> Any:
        info = json.loads(text)
        cpus = [psutil.Process(p) for p in info["cpu_pids"]]
        time.sleep(0.5)          # let the machine run a little: the kernel is booted
        os.kill(info["server_pid"], signal.SIGKILL)
        t0 = time.monotonic()
        while len(exits) < len(cpus) and time.monotonic() - t0 < 8:
            for p in cpus:       # the status only: reaping is the launcher's
                if p.pid not in exits:
                    try:
                        gone = p.status() == psutil.STATUS_ZOMBIE
                    except psutil.NoSuchProcess:
                        gone = True
                    if gone:
                        exits[p.pid] = time.monotonic() - t0
            time.sleep(0.01)
        return info

    w = Watcher(live, kill_server)
    res, _ = _run_with(run, ["machine.cpus=3", *BASE], [], w)
    r = res.report
    info = w.result
    assert f"server (pid {info['server_pid']}) died" in r["reason"], describe(res)
    assert sorted(exits) == sorted(info["cpu_pids"]), (exits, info)
    assert max(exits.values()) < 2.0, f"cpus exited after {exits} s"
    assert not [p for p in r["problems"] if "did not stop" in p], r["problems"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "server" in log
