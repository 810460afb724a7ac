"""The machine-dependent layer: the one door between the kernel and the machine.

Machine-independent kernel code never imports ``hw``: everything it needs of the hardware
it asks of ``kernel/machine/`` (DESIGN.md decision 12), the way FreeBSD's MI code calls
``PCPU_GET``, ``cpu_switch``, ``atomic_*`` and ``pmap_*`` and never touches a register:

* this module: the processor. Per-CPU data (``pcpu``), the caller's source site, time and
  work, thread stacks and the context switch, critical sections and interrupts, IPIs, the
  console, panics, and the kernel's registrations with the machine;
* :mod:`smp.kernel.machine.memory`: shared memory (loads, stores, atomics on the fields of
  kernel objects), allocation, lists and hash tables, physical pages, the kernel MMU and
  the swap device;
* :mod:`smp.kernel.machine.lock`: lock words and sleep queues;
* :mod:`smp.kernel.machine.pmap`: the machine-dependent half of the pmap;
* :mod:`smp.kernel.machine.swtch`: the context switch.

Only these modules import ``hw``; they alone know the wire protocol's constants, so this is
the one place where the kernel meets the machine: where every request is counted, costed in
machine time and recorded (``smp.hw.cpu``, ``smp.hw.bus``).

**Sites.** Every shared access carries the *kernel* source site that made it (DESIGN.md
decision 5): the first frame, walking out from the request, that is neither in a module
that declares itself plumbing with ``__site_transparent__ = True`` (the door: this
module, ``memory``, ``lock``; the lock and struct code whose requests belong to their
caller, as FreeBSD's lock macros pass ``__FILE__``/``__LINE__`` of theirs) nor a function
marked so with :func:`site_transparent` (a macro among other code: ``vm_map_lock``,
``PROC_LOCK``). The machine-dependent kernel code of this package (``pmap``, ``swtch``,
``vm_machdep``) names its own sites, as i386's does. Sites are named relative to
``kernel/`` (``vm/vm_glue.py:412``).

``pcpu`` is this CPU's private data (FreeBSD's ``struct pcpu``): it lives in the CPU
process, not in the server, because no other CPU may touch it (DESIGN.md decision 1).
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from smp.hw.protocol import Op
from smp.hw.seeds import derive

if TYPE_CHECKING:
    from smp.hw.cpu import Context, Cpu

_KERNEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_names: dict[CodeType, str | None] = {}
__site_transparent__ = True             # the door: its requests are their caller's
_transparent: set[CodeType] = set()     # functions whose requests are their caller's


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def site_transparent(fn: _Fn) -> _Fn:
    """Mark one function as plumbing (its requests carry its caller's site): a lock
    wrapper in a module that is not plumbing as a whole, as ``vm_map_lock`` is FreeBSD's
    macro passing ``LOCK_FILE``/``LOCK_LINE`` of its caller."""
    _transparent.add(fn.__code__)
    return fn


def _short(frame: FrameType) -> str | None:
    """The site name of ``frame``'s code, or None for the door and for plumbing."""
    code = frame.f_code
    name = _names.get(code, "")
    if name == "":
        fn = os.path.abspath(code.co_filename)
        if frame.f_globals.get("__site_transparent__") or code in _transparent:
            name = None
        else:
            name = fn[len(_KERNEL_DIR):] if fn.startswith(_KERNEL_DIR) else os.path.basename(fn)
        _names[code] = name
    return name


def site() -> str:
    """``file:line`` of the kernel code that made the current request."""
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        name = _short(f)
        if name is not None:
            return f"{name}:{f.f_lineno}"
        f = f.f_back
    return "?"


def kernel_stack(frame: FrameType | None = None, limit: int = 24) -> list[str]:
    """The kernel frames of the current (or given) stack, outermost first, as
    ``file:line function``: the door, plumbing and the simulator's own frames left out."""
    f = frame if frame is not None else sys._getframe(1)
    out: list[str] = []
    while f is not None and len(out) < limit:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn.startswith(_KERNEL_DIR) and _short(f) is not None:
            out.append(f"{_short(f)}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return out[::-1]


class PCpu:
    """FreeBSD's ``struct pcpu`` for this CPU, plus the hardware it runs on (``hw``: for
    the modules of this package only)."""

    def __init__(self, hw: "Cpu", ncpus: int, config: dict[str, Any]) -> None:
        self.hw = hw
        self.cpuid = hw.id
        self.ncpus = ncpus
        self.config = config
        self.idlethread: Any = None       # the local record (kern_thread.LocalThread)
        self.runq: Any = None             # kern_switch.RunQueue
        self.callouts: Any = None         # kern_timeout.CalloutWheel
        self.ticks = 0
        self.threads: dict[int, Any] = {} # this CPU's threads by tid (LocalThread)
        self.ap_started = False
        self.stats: dict[str, int] = {}   # kernel event counters reported at the end
        self.violations: list[str] = []
        self.console: list[str] = []
        self.findings: list[dict[str, str]] = []
        # where threads waited for locks: (lock address, kernel stack) -> [count, wait s]
        self.lock_waits: dict[tuple[int, tuple[str, ...]], list[float]] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def note_finding(self, ident: str, what: str, detector: str = "kernel",
                     detail: str = "") -> None:
        """Something a check in the kernel saw (a known bug of the 2002 code, FINDINGS.md,
        or a watchdog): counted and kept for the report."""
        self.count(f"finding_{ident}")
        if len(self.findings) < 100:
            self.findings.append({"id": ident, "summary": what, "detector": detector,
                                  "detail": detail})

    def note_violation(self, what: str) -> None:
        """A broken invariant: counted, kept for the report, and the run fails."""
        self.count("invariant_violations")
        if len(self.violations) < 100:
            self.violations.append(what)


pcpu: PCpu = None  # type: ignore[assignment]   # set once by attach() in each CPU process


def attach(hw: "Cpu", ncpus: int, config: dict[str, Any]) -> PCpu:
    global pcpu
    pcpu = PCpu(hw, ncpus, config)
    return pcpu


def pcpu_hw() -> "Cpu":
    """The hardware under this CPU (for the modules of this package)."""
    return pcpu.hw


def install(*, on_clock: Callable[[], None], on_ipi: Callable[[int, str, Any], None],
            on_grant: Callable[[int, int], None], on_final: Callable[[], None],
            describe: Callable[["Context"], dict[str, Any]],
            final_report: Callable[[], dict[str, Any]]) -> None:
    """The kernel's interrupt vectors and the hooks the machine calls: the clock, IPIs,
    lock grants, the end-of-run check request, a thread's description for crash dumps,
    and the kernel's part of the final report."""
    hw = pcpu.hw
    hw.on_clock = on_clock
    hw.on_ipi = on_ipi
    hw.on_grant = on_grant
    hw.on_final = on_final
    hw.describe = describe
    hw.final_report = final_report
    hw.kernel_sample = lambda: dict(pcpu.stats)


# -- thread stacks and the context switch ----------------------------------------------------
def curctx() -> "Context":
    ctx = pcpu.hw.cur
    assert ctx is not None
    return ctx


def curctx_or_none() -> "Context | None":
    return pcpu.hw.cur


def new_context(tid: int, name: str, fn: Callable[[], None], critnest: int = 0) -> "Context":
    """A new thread stack that starts in ``fn``, inside ``critnest`` critical sections."""
    ctx = pcpu.hw.new_context(tid, name, fn)
    ctx.critnest = critnest
    return ctx


def rename_context(ctx: "Context", tid: int, name: str, kdata: Any) -> None:
    """The running boot stack becomes thread ``tid``."""
    hw = pcpu.hw
    hw.contexts.pop(ctx.tid, None)
    ctx.tid, ctx.name, ctx.kdata = tid, name, kdata
    hw.contexts[tid] = ctx


# -- interrupts ----------------------------------------------------------------------------
def critical_enter() -> None:
    pcpu.hw.critical_enter()


def critical_exit() -> None:
    pcpu.hw.critical_exit()


def interrupts_enabled() -> bool:
    return pcpu.hw.interrupts_enabled


def idle_wait() -> None:
    """Nothing to run: wait for the next interrupt (a tick, an IPI, a grant) and take it."""
    pcpu.hw.idle_wait()


def spin_wait(tid: int, lock: int) -> None:
    """Spin, interrupts masked, until the machine grants ``lock`` to thread ``tid``."""
    pcpu.hw.spin_wait(tid, lock)


# -- time and work -------------------------------------------------------------------------
def cpu_work(sim_us: float, mode: str = "sys") -> None:
    """The running thread computes for ``sim_us`` simulated microseconds in ``mode``
    ('user', 'nice' or 'sys'); interrupts are taken meanwhile if enabled."""
    pcpu.hw.work(sim_us, mode)


def sim_now() -> float:
    """This CPU's simulated time, in seconds since the machine started."""
    return float(pcpu.hw.clock.now())


def add_sleep_lock_wait(seconds: float) -> None:
    """Per-CPU accounting of the time threads spent blocked on sleep locks."""
    pcpu.hw.counters.sleep_wait_s += seconds


def note_lock_wait(lock: int, seconds: float, frame: FrameType | None = None) -> None:
    """Where a thread waited for ``lock``, and how long: the kernel stack of the wait (for
    the report's folded stacks: a flame graph of lock contention)."""
    stack = tuple(kernel_stack(frame if frame is not None else sys._getframe(1), limit=12))
    w = pcpu.lock_waits.get((lock, stack))
    if w is None:
        if len(pcpu.lock_waits) >= 300:
            return
        w = pcpu.lock_waits[(lock, stack)] = [0, 0.0]
    w[0] += 1
    w[1] += seconds


def random_source(*path: object) -> random.Random:
    """A random source of this run, by the path of names that says whose it is (``"proc",
    pid``): derived from ``run.seed`` in the one place all seeds are (``hw/seeds.py``)."""
    return derive(int(pcpu.config["run.seed"]), *path)


def chaos_want_yield() -> bool:
    """Chaos (``debug.chaos``): should the running thread yield at this safe point?"""
    chaos = pcpu.hw.chaos
    return chaos is not None and chaos.want_yield()


def chaos_on() -> bool:
    return pcpu.hw.chaos is not None


# -- other CPUs, the console, the end ------------------------------------------------------
def ipi(cpu: int, kind: str, args: Any) -> None:
    pcpu.hw.ipi(cpu, kind, args, site())


def printf(msg: str) -> None:
    """The kernel's console: kept per CPU and printed in the run's report."""
    pcpu.count("printf")
    if len(pcpu.console) < 200:
        pcpu.console.append(msg.rstrip("\n"))


def shutdown(why: str) -> None:
    """Ask the machine to stop now, cleanly (reboot(2) without the reboot): every CPU
    halts and the run ends as if its duration had passed."""
    pcpu.hw.post(Op.REPORT, site(), "halt", why)


def final_check_done() -> None:
    """This CPU has run the end-of-run check the machine asked for."""
    pcpu.hw.post(Op.REPORT, site(), "checked", pcpu.cpuid)


def panic(message: str) -> None:
    """FreeBSD's panic(9): stop every CPU and write the crash report. Never returns."""
    pcpu.hw.panic(f"panic: {message}", site=site(),
                  kstack=kernel_stack(sys._getframe(1)))


def register(kind: str, payload: Any) -> None:
    """Tell the machine a piece of the kernel's policy, at boot (DESIGN.md decision 12):
    the server enforces and reports what the kernel registers and names nothing of the
    kernel itself. Kinds: ``lock_keys`` (what each field lock key means), ``lock_order``
    (the static order and the locks exempt from WITNESS's sleep rules), ``scheduler_lock``
    (the lock that sleep queues need), ``vmstats`` (the kernel object whose fields are
    the machine's page counts), ``invariants`` (end-of-run checks over kernel memory),
    ``counters`` (the kernel's work counters, in report order)."""
    pcpu.hw.post(Op.POLICY, site(), kind, payload)


def fatal_trace() -> list[str]:
    """The Python trace of the current exception (for panics from unexpected errors)."""
    return traceback.format_exc().splitlines()
