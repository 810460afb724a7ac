"""A whole machine in one process: for tests of kernel logic that is not about races.

A machine of ``smp run`` is a launcher, a server and a CPU process per CPU, talking over
ZeroMQ, because its point is real concurrency. Much of the kernel is not about races: the
page queues, vm_map, the proc zone, the config's way into the kernel, a vm_glue function
called once. For those a test needs the same kernel on the same server, not the
processes: this module runs one CPU, the server and the launcher's part in one process,
with the bus's socket replaced by a :class:`LocalChannel` that hands each frame to the
server at once (the same frames, packed and unpacked as on the wire) and the server's
replies and events back. Nothing waits on the host: the machine is in virtual time, a CPU
that would wait for a message finds it already queued (the server answers as it is
asked), and one that would wait for a message that nothing can send any more is stuck:
:class:`LocalStuck` says so instead of hanging (a lost wakeup in a one-CPU machine).

It is the testing tool of the library, in the manner of trio's ``MockClock`` and SimPy's
environment: deterministic (one CPU, one order, no host timing anywhere), and a boot of
the default kernel with a scenario takes a fraction of a second.

The kernel keeps per-CPU state in its modules (DESIGN.md: one CPU, one process), so each
machine runs in a child forked for it (:func:`run_local`); the caller's process, which
imports the same kernel modules for its scenario code, is never booted and stays clean
for the next machine. The child sends back the report, as ``smp run`` writes it.
"""

from __future__ import annotations

import collections
import json
import os
import time
import traceback
from typing import Any, Sequence

import multiprocess

from smp import __version__
from smp.hw.bus import Bus
from smp.hw.protocol import VERSION, Event, Op, pack, unpack
from smp.machine.cpuproc import make_cpu, run_cpu
from smp.machine.sequencer import TimeSpec
from smp.machine.server import Server, detectors_of
from smp.observe.report import build_report, write_run_dir
from smp.run.config import Config
from smp.run.launcher import RunResult, end_reason

CPU = b"cpu0"
LAUNCHER = b"launcher"


class LocalStuck(Exception):
    """The machine waits for a message that nothing in it can send any more."""


class _LocalServer(Server):
    """The server, its sends queued for the peers of this process instead of a socket."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.outbox: dict[bytes, collections.deque[bytes]] = \
            collections.defaultdict(collections.deque)

    def send(self, ident: bytes, msg: list[Any]) -> None:
        self.outbox[ident].append(pack(msg))


class LocalChannel:
    """The bus's socket and poller in one (``smp.hw.bus.Channel``): a frame sent is handled
    by the server at once; what the server sends back waits in its outbox."""

    def __init__(self, machine: LocalMachine, ident: bytes) -> None:
        self.machine = machine
        self.ident = ident
        self.box = machine.server.outbox[ident]

    def send(self, frame: bytes) -> None:
        self.machine.server.handle(self.ident, frame)

    def recv(self) -> bytes:
        return self.box.popleft()

    def poll(self, timeout_ms: int) -> bool:
        self.machine.launcher_step()
        if self.box:
            return True
        if timeout_ms > 0:
            raise LocalStuck("the CPU waits for a message from the server, and nothing in "
                             "this one-CPU machine can send it any more")
        return False

    def close(self, linger_ms: int = 0) -> None:
        pass


class LocalMachine:
    """One CPU, the server, and the launcher's part of the run, in this process."""

    def __init__(self, cfg: Config) -> None:
        if cfg["machine.time"] != "virtual":
            raise ValueError("a machine in one process runs in virtual time "
                             "(machine.time = \"virtual\")")
        self.cfg = cfg.with_values({"machine.cpus": 1, "run.record": False}, "local machine")
        c = self.cfg
        self.flat = {k: c[k] for k in c}
        self.server = _LocalServer(
            "local", 1, int(c["machine.memory"]), int(c["machine.swap"]), None, 0.0,
            detectors_of(self.flat), bool(c["machine.lines"]), int(c["machine.kmem_objects"]),
            TimeSpec(virtual=True, quantum_ns=int(c["machine.quantum"]),
                     end_ns=int(float(c["run.duration"]) * 1e9)))
        self.seq = 0
        self.ends = 0
        self.reason = "end of run"
        self.problems: list[str] = []
        self.notes: list[str] = []
        self._ctl(Op.HELLO, VERSION, "launcher", -1, os.getpid())

    # -- the launcher's part --------------------------------------------------------------
    def _ctl(self, op: int, *args: Any) -> Any:
        """A request of the launcher; its reply, if the server gave one at once."""
        self.seq += 1
        seq = self.seq
        self.server.handle(LAUNCHER, pack([op, seq, 0, "", 0, *args]))
        box = self.server.outbox[LAUNCHER]
        for frame in list(box):
            msg = unpack(frame)
            if msg[0] == Op.REPLY and msg[1] == seq:
                box.remove(frame)
                return msg[3]
        return None

    def launcher_step(self) -> None:
        """Act on the events the server sent the launcher, as ``smp run``'s launcher does:
        at the run's end the final check, then the halt; a panic or the kernel's own
        shutdown halts the machine."""
        box = self.server.outbox[LAUNCHER]
        while box:
            msg = unpack(box.popleft())
            if msg[0] != Op.EVENT:
                continue
            kind = msg[1]
            if kind == Event.END:
                self.ends += 1
                if self.ends == 1:
                    self._ctl(Op.CTL_FINAL)
                else:
                    self._ctl(Op.CTL_HALT, self.reason, [])
            elif kind in (Event.PANIC, Event.HALT):
                self.reason = end_reason([msg]) or self.reason
                self._ctl(Op.CTL_HALT, self.reason, [])

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Boot, run until the machine halts; the report, as ``smp run`` builds it."""
        t0 = time.monotonic()
        bus = Bus("local", CPU.decode(), channel=LocalChannel(self, CPU))
        final: dict[str, Any] = {}
        try:
            bus.hello("cpu", 0, os.getpid())
            self._ctl(Op.CTL_START)
            hw = make_cpu(0, bus, self.flat)
            final = run_cpu(hw, self.flat, 1.0)
            bus.call(Op.REPORT, 0, "", "final", final)
        except LocalStuck as e:
            self.reason = str(e)
            self.problems.append(f"stuck: {e}")
        except Exception as e:  # noqa: BLE001 - a broken machine is a report, not a crash
            self.reason = f"local machine error: {type(e).__name__}: {e}"
            self.problems.append(self.reason)
            self.notes.extend(traceback.format_exc().splitlines())
        server = self._ctl(Op.CTL_REPORT) or {}
        sim = min((final.get("clock") or {}).get("sim_time", 0.0),
                  float(self.cfg["run.duration"]))
        return build_report(server, ncpus=int(self.cfg["machine.cpus"]),
                            seed=int(self.cfg["run.seed"]), config=self.cfg.source,
                            reason=self.reason, problems=self.problems,
                            notes=self.notes, wall_s=time.monotonic() - t0, sim_s=sim,
                            interrupted=False, version=__version__)


def run_local(cfg: Config, sysinits: Sequence[Any] = (), run_dir: str | None = None,
              timeout: float = 60.0) -> RunResult:
    """Run ``cfg``'s machine with one CPU in one process (forked for it: see the module
    docstring), the kernel's SYSINITs plus ``sysinits``; its report, written to
    ``run_dir/report.json`` when given. A machine that has not halted in ``timeout``
    host seconds is killed and reported so."""
    ctx = multiprocess.get_context("fork")
    r, w = ctx.Pipe(duplex=False)

    def child() -> None:
        code = 0
        try:
            if sysinits:
                from smp.kernel.sys.kernel import SYSINIT
                for si in sysinits:
                    SYSINIT(si.name, si.subsystem, si.order, si.func, si.udata, si.percpu)
            w.send(json.dumps(LocalMachine(cfg).run(), default=str))
        except BaseException:  # noqa: BLE001 - the parent reads why
            w.send(json.dumps({"error": traceback.format_exc()}))
            code = 4
        w.close()
        os._exit(code)       # the greenlets of halted threads are dropped, never resumed

    proc = ctx.Process(target=child, name="smp-local", daemon=True)
    proc.start()
    w.close()
    try:
        if not r.poll(timeout):
            raise TimeoutError(f"the local machine did not halt within {timeout:.0f} s")
        report = json.loads(r.recv())
    finally:
        if proc.is_alive():
            proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        r.close()
    if "error" in report:
        raise RuntimeError(f"the local machine failed:\n{report['error']}")
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        write_run_dir(run_dir, report)
    return RunResult(0 if report["ok"] else 1, run_dir or "", report)
