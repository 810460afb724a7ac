"""Shared helpers of the machine tests: starting machines, watching processes, and the
kernel-side plumbing that tests run inside the simulated CPUs.

Two halves:

* host side (the pytest process): :func:`run` boots a machine with the real server and CPU
  processes and returns its ``RunResult``; :func:`run_local` a one-CPU machine in one
  process, for kernel logic that is not about races; :func:`cli_env`, :func:`wait_for` and
  :func:`survivors` help the tests that drive ``python -m smp.cli`` as a subprocess.
* kernel side (runs in the forked CPU processes, called from SYSINITs and kernel threads):
  :func:`bsp_init`, :func:`on_each_cpu`, :func:`lookup`, :func:`wait_until`,
  :func:`result` and :func:`finish`. A test publishes its shared object from the BSP, starts
  kernel threads on every CPU, lets a coordinator on cpu 0 wait for them, and hands its
  findings back through kernel counters (``md.pcpu.count``, summed into
  ``report["kernel"]``) before it ends the run with ``md.shutdown``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import psutil

REPO = pathlib.Path(__file__).resolve().parent.parent
# Every process started through cli_env() carries this token in its environment, and so
# do the processes those fork, so an orphan re-parented to init can still be found.
TOKEN_VAR = "SMP_TEST_TOKEN"
TOKEN = f"smp-test-{os.getpid()}-{time.time_ns()}"


# -- host side ------------------------------------------------------------------------------
def config(overrides: Sequence[str] = ()) -> Any:
    from smp.run.config import load_config
    return load_config(None, list(overrides))


def run(cfg_overrides: Sequence[str] = (), sysinits: Sequence[Any] = (),
        tmp_path: pathlib.Path | str | None = None,
        log: Callable[[str], None] | None = None) -> Any:
    """Boot, run and stop a machine (``smp.run.launcher.run_machine``); returns its RunResult.

    The run directory is ``tmp_path/run``; the launcher's log lines go to ``log`` (default:
    dropped, they are in ``run/log.txt`` anyway)."""
    from smp.run.launcher import run_machine
    if tmp_path is None:
        raise ValueError("run() needs tmp_path for its run directory")
    cfg = config(cfg_overrides)
    rdir = pathlib.Path(tmp_path) / "run"
    return run_machine(cfg, run_dir=str(rdir), log=log or (lambda line: None),
                       sysinits=tuple(sysinits))


def run_local(cfg_overrides: Sequence[str] = (), sysinits: Sequence[Any] = (),
              tmp_path: pathlib.Path | str | None = None, timeout: float = 60) -> Any:
    """The same on a one-CPU machine in one process (``smp.run.local``): for kernel logic
    that is not about races. Its report is ``tmp_path/run/report.json``."""
    from smp.run.local import run_local as local
    if tmp_path is None:
        raise ValueError("run_local() needs tmp_path for its run directory")
    return local(config(cfg_overrides), tuple(sysinits), str(pathlib.Path(tmp_path) / "run"),
                 timeout=timeout)


@contextlib.contextmanager
def bare_server(ncpus: int, memory: int = 1 << 20, swap: int = 1 << 18,
                kmem_objects: int | None = None) -> Iterator[tuple[str, Any]]:
    """A machine server alone (no launcher, no CPUs) in its own process, on ipc:// in a
    private temporary directory; yields its endpoint and process; killed if still alive
    and cleaned up afterwards.
    For tests that speak the protocol to it themselves."""
    import multiprocess
    import shutil
    import tempfile
    from smp.machine.server import server_main
    d = tempfile.mkdtemp(prefix="smpsrv-")        # short: ipc paths must be < 108 chars
    endpoint = f"ipc://{d}/bus"
    server = multiprocess.get_context("fork").Process(
        target=server_main, args=(endpoint, ncpus, memory, swap),
        kwargs={"kmem_objects": kmem_objects}, daemon=True)
    server.start()
    try:
        yield endpoint, server
    finally:
        if server.is_alive():
            server.kill()
        server.join(5)
        shutil.rmtree(d, ignore_errors=True)


def describe(result: Any) -> str:
    """A one-paragraph account of a run, for assertion messages."""
    r = result.report
    panic = (r.get("panic") or {}).get("message")
    return (f"exit {result.exit_status}, ok {r.get('ok')}, reason {r.get('reason')!r}, "
            f"panic {panic!r}, problems {r.get('problems')}, invariants "
            f"{r.get('invariants')}, kernel {r.get('kernel')}")


def cli_env() -> dict[str, str]:
    """The environment for ``python -m smp.cli`` run from another directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env[TOKEN_VAR] = TOKEN
    env.pop("PYTHONSTARTUP", None)
    for var in [v for v in env if v.startswith("PYTEST_XDIST_")]:
        del env[var]                # an xdist worker's own, not what a user's shell has
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "smp.cli", *args]


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something true; fail after ``timeout`` wall s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def tagged_processes() -> list[psutil.Process]:
    """Live processes of this user whose environment carries this session's token."""
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != os.getuid():
                continue
            if p.environ().get(TOKEN_VAR) == TOKEN and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def survivors(extra_pids: Iterable[int] = (), tagged: bool = True) -> list[psutil.Process]:
    """Every process that a test may have left behind: children (recursive) of this
    process, tagged processes (see TOKEN) unless ``tagged`` is false, and the given pids
    if still alive."""
    found: dict[int, psutil.Process] = {}
    try:
        for p in psutil.Process().children(recursive=True):
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in tagged_processes() if tagged else []:
        found[p.pid] = p
    for pid in extra_pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                found[pid] = p
        except psutil.NoSuchProcess:
            pass
    alive = []
    for p in found.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- kernel side (runs in the CPU processes) --------------------------------------------------
def sysinit(name: str, func: Callable[[Any], None], *, percpu: bool,
            order: str = "SI_ORDER_THIRD", udata: Any = None) -> Any:
    from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SysInit
    return SysInit(name, SI_SUB.SI_SUB_KTHREAD_INIT, SI_ORDER[order], func, udata, percpu)


def bsp_init(symbol: str, make: Callable[[], Any]) -> Any:
    """A BSP-only SYSINIT (before the APs are released) that makes the test's shared
    object with ``make()`` and publishes it under ``symbol``."""
    def init(_: Any) -> None:
        from smp.kernel.machine import memory
        obj = make()
        memory.symbol(symbol, obj.handle)
    return sysinit(f"test-init-{symbol}", init, percpu=False, order="SI_ORDER_FIRST")


def on_each_cpu(name: str, start: Callable[[int], None]) -> Any:
    """A per-CPU SYSINIT that calls ``start(cpuid)`` on every CPU at boot (it typically
    creates kernel threads, pinned to that CPU, with ``kthread_create``)."""
    def init(_: Any) -> None:
        from smp.kernel.machine import cpu as md
        start(md.pcpu.cpuid)
    return sysinit(f"test-start-{name}", init, percpu=True, order="SI_ORDER_THIRD")


def lookup(symbol: str, struct: Any) -> Any:
    from smp.kernel.machine import cpu as md
    from smp.kernel.machine import memory
    obj = struct.at(memory.lookup(symbol))
    if obj is None:
        md.panic(f"test: symbol {symbol} not published")
    return obj


def kthread(fn: Callable[[], None], name: str) -> Any:
    from smp.kernel.kern.kern_kthread import kthread_create
    return kthread_create(fn, name)


def _deadline(max_ticks: int | None) -> float:
    """The simulated time (s) at which a wait of the test gives up: ``max_ticks`` ticks from
    now, or by default a simulated second before the run's end (so that the panic, with its
    account of the progress made, comes before the launcher stops the machine)."""
    from smp.kernel import param
    from smp.kernel.machine import cpu as md
    now = md.sim_now()
    if max_ticks is not None:
        return now + max_ticks / param.hz
    return max(float(md.pcpu.config["run.duration"]) - 1.0, now + 1.0)


def wait_until(cond: Callable[[], Any], what: str | Callable[[], str],
               max_ticks: int | None = None, step_us: float = 500) -> None:
    """In a kernel thread: compute a little and give the CPU to this CPU's other threads,
    again and again, until ``cond()`` holds. Past the deadline (see ``_deadline``) panic,
    naming ``what`` (a string, or a function that describes the progress made).

    Deliberately built on nothing but ``cpu_work`` and a forced ``maybe_yield``, not on timed
    sleeps or wakeups, so that the waits of the tests do not depend on what they test."""
    from smp.kernel.kern.kern_synch import maybe_yield
    from smp.kernel.kern.kern_thread import curlocal
    from smp.kernel.machine import cpu as md
    deadline = _deadline(max_ticks)
    while not cond():
        if md.sim_now() > deadline:
            md.panic(f"test: timed out waiting for {what if isinstance(what, str) else what()}")
        md.cpu_work(step_us)
        curlocal().need_resched = True
        maybe_yield()


def spin_until(cond: Callable[[], Any], what: str, max_ticks: int | None = None,
               step_us: float = 200) -> None:
    """In a kernel thread: compute, without sleeping or yielding, until ``cond()`` holds;
    past the deadline (as :func:`wait_until`) panic."""
    from smp.kernel.machine import cpu as md
    deadline = _deadline(max_ticks)
    while not cond():
        if md.sim_now() > deadline:
            md.panic(f"test: timed out spinning for {what}")
        md.cpu_work(step_us)


def result(name: str, value: int = 1) -> None:
    """Hand a number back to the test: ``report["kernel"][name]`` (summed over CPUs)."""
    from smp.kernel.machine import cpu as md
    md.pcpu.count(name, int(value))


def finish(why: str = "test done") -> None:
    """End the run now, cleanly (the report's reason becomes ``shutdown: <why>``)."""
    from smp.kernel.machine import cpu as md
    md.shutdown(why)


# BUG (smp/run/launcher.py, the wait loop of run_machine): after ``md.shutdown`` the server halts
# the CPUs and tells the launcher at the same moment; a CPU that has already sent its final
# report and exited by the time the launcher looks is taken for a dead CPU, because the loop
# checks the process sentinels before the HALT event ("cpu1 (pid N) died: exit status 0",
# exit 1). Seen about once in 20 shutdowns on a busy 2-core host. Until it is fixed, a test
# that ends its run with md.shutdown accepts exactly that outcome, provided every CPU
# delivered its final report (so the kernel counters the test reads are complete).
_SHUTDOWN_RACE = re.compile(r"cpu\d+ \(pid \d+\) died: exit status 0")
_SHUTDOWN_RACE_NOTE = re.compile(r"cpu\d+'s threads held: no locks")   # said of a "dead" cpu


def _shutdown_race(r: dict[str, Any]) -> bool:
    problems = r["problems"]
    return (any(_SHUTDOWN_RACE.fullmatch(p) for p in problems)
            and all(_SHUTDOWN_RACE.fullmatch(p) or _SHUTDOWN_RACE_NOTE.fullmatch(p)
                    for p in problems)
            and all(c["reported"] for c in r["cpus"]) and not r["invariants"]
            and r["panic"] is None)


def expect_shutdown(res: Any) -> dict[str, int]:
    """Assert that the run ended by the test's own shutdown, cleanly; return the kernel
    counters."""
    r = res.report
    if not _shutdown_race(r):
        assert str(r["reason"]).startswith("shutdown:"), describe(res)
        assert res.exit_status == 0 and r["ok"], describe(res)
    assert r["panic"] is None, describe(res)
    assert r["kernel"].get("invariant_violations", 0) == 0, describe(res)
    return dict(r["kernel"])


def expect_panic(res: Any, *words: str) -> str:
    """Assert that the run ended in a panic whose message has every one of ``words``;
    return the message."""
    r = res.report
    assert res.exit_status == 1, describe(res)
    assert r["ok"] is False and r["panic"] is not None, describe(res)
    msg = str(r["panic"]["message"])
    for w in words:
        assert w in msg, f"{w!r} not in panic message {msg!r}"
    assert pathlib.Path(res.run_dir, "crash.txt").is_file()
    return msg


@contextlib.contextmanager
def session(cmd: Sequence[str], cwd: pathlib.Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``cmd`` started in a session of its own, its output piped (text); if it is still
    running when the block ends (the test failed), its whole process group is killed."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=cli_env() if env is None else env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def cli(cwd: pathlib.Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m smp.cli ARGS`` in ``cwd``; on timeout its whole process group is killed
    and the test fails."""
    proc = subprocess.Popen(cli_cmd(*args), cwd=cwd, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"smp {' '.join(args)} did not finish in {timeout} s: "
                             f"{out}{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class FullAfter:
    """A file whose writes fail with ENOSPC after ``n`` of them (a disk filling up)."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.n = f, n

    def write(self, data: Any) -> int:
        if self.n <= 0:
            import errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.n -= 1
        return int(self.f.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def filling_open(suffix: str, writes: int) -> Callable[..., Any]:
    """An ``open`` for a module under test: a file whose name ends with ``suffix``, opened
    for writing, takes ``writes`` writes, then fails each with ENOSPC. (A machine's
    server and CPUs are forked from the test: they inherit the module patched.)"""
    import builtins
    real_open = builtins.open

    def fake_open(path: Any, *args: Any, **kw: Any) -> Any:
        f = real_open(path, *args, **kw)
        mode = str(args[0] if args else kw.get("mode", "r"))
        filling = ("w" in mode or "a" in mode) and str(path).endswith(suffix)
        return FullAfter(f, writes) if filling else f
    return fake_open


class SentSocket:
    """An in-process server's socket: what it sends is kept, never answered."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> None:
        self.sent.append(bytes(data))


def inproc_server(timespec: Any, **kw: Any) -> tuple[Any, Callable[..., None]]:
    """A two-CPU server handled in this process (the server's logic, no ZeroMQ), the
    launcher (``L``) and both CPUs (``A``, ``B``) said hello; and ``req(ident, op, *args,
    tid=, t=, posted=, site=)``, which hands it a request."""
    import itertools
    from smp.hw.protocol import VERSION, Op, pack
    from smp.machine.server import Server
    srv = Server("inproc://unused", 2, 16 * 4096, 8, timespec=timespec, **kw)
    srv.sock = SentSocket()
    seqs = itertools.count(1)

    def req(ident: bytes, op: Op, *args: Any, tid: int = 0, t: int = 0,
            posted: bool = False, site: str = "t.py:1") -> None:
        srv.handle(ident, pack([int(op), 0 if posted else next(seqs), tid, site, t, *args]))

    req(b"L", Op.HELLO, VERSION, "launcher", -1, 1)
    req(b"A", Op.HELLO, VERSION, "cpu", 0, 2)
    req(b"B", Op.HELLO, VERSION, "cpu", 1, 3)
    return srv, req
