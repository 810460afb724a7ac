"""The machine-dependent layer: per-CPU data and every access the kernel makes to hardware.

Machine-independent kernel code never touches ``hw`` directly; it calls the functions here
(the way FreeBSD's MI code calls ``PCPU_GET``, ``cpu_switch`` and ``pmap_*``). Each shared
access is one bus request carrying the running thread and the *kernel* source site that
made it: the frame of the first caller outside this layer and the lock and struct
plumbing, named relative to ``kernel/`` (``vm/vm_glue.py:412``), as ``__FILE__``/``__LINE__``
in FreeBSD's lock macros.

``pcpu`` is this CPU's private data (FreeBSD's ``struct pcpu``): it lives in the CPU
process, not in the server, because no other CPU may touch it (DESIGN.md decision 1).
"""

from __future__ import annotations

import os
import sys
from types import CodeType
from typing import TYPE_CHECKING, Any

from hw.protocol import Op

if TYPE_CHECKING:
    from hw.cpu import Context, Cpu

_KERNEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Files whose frames are plumbing, not the site a reader wants to see.
_PLUMBING = {"machine/cpu.py", "sys/kstruct.py", "kern/kern_mutex.py", "kern/kern_sx.py",
             "kern/kern_lock.py", "sys/proc.py"}
_names: dict[CodeType, str | None] = {}


def _short(code: CodeType) -> str | None:
    name = _names.get(code, "")
    if name == "":
        fn = os.path.abspath(code.co_filename)
        name = fn[len(_KERNEL_DIR):] if fn.startswith(_KERNEL_DIR) else os.path.basename(fn)
        if name in _PLUMBING:
            name = None
        _names[code] = name
    return name


def site() -> str:
    """``file:line`` of the kernel code that made the current request."""
    f = sys._getframe(1)
    while f is not None:
        name = _short(f.f_code)
        if name is not None:
            return f"{name}:{f.f_lineno}"
        f = f.f_back  # type: ignore[assignment]
    return "?"


class PCpu:
    """FreeBSD's ``struct pcpu`` for this CPU, plus the hardware it runs on."""

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


def curctx() -> "Context":
    ctx = pcpu.hw.cur
    assert ctx is not None
    return ctx


# -- shared memory: one request each ------------------------------------------------------
def load(h: int, field: str) -> Any:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    return hw.call(Op.LOAD, site(), h, field)


def loadn(h: int, fields: list[str]) -> list[Any]:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    return hw.call(Op.LOADN, site(), h, fields)  # type: ignore[no-any-return]


def store(h: int, field: str, value: Any) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.STORE, site(), h, field, value)


def storen(h: int, values: dict[str, Any]) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.STOREN, site(), h, values)


def atomic_add(h: int, field: str, delta: int) -> int:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    return hw.call(Op.ADD, site(), h, field, delta)  # type: ignore[no-any-return]


def add_posted(h: int, field: str, delta: int) -> None:
    """``x += delta`` where nobody waits for the result: one posted request. Used where
    the C increments a field under its lock; the lock still orders the accesses."""
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.ADDP, site(), h, field, delta)


def atomic_set(h: int, field: str, bits: int) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.SETBITS, site(), h, field, bits)


def atomic_clear(h: int, field: str, bits: int) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.CLRBITS, site(), h, field, bits)


def bus_call(op: int, *args: Any) -> Any:
    """Any other request that returns a value (allocation, lists, lookups)."""
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    return hw.call(op, site(), *args)


def bus_post(op: int, *args: Any) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(op, site(), *args)


# -- time and work ------------------------------------------------------------------------
def cpu_work(sim_us: float, mode: str = "sys") -> None:
    """The running thread computes for ``sim_us`` simulated microseconds."""
    pcpu.hw.work(sim_us, mode)


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
    hw = pcpu.hw
    hw.post(Op.REPORT, site(), "halt", why)


def panic(message: str) -> None:
    """FreeBSD's panic(9): stop every CPU and write the crash report. Never returns."""
    pcpu.hw.panic(f"panic: {message}", site=site())


# -- kernel virtual memory: loads and stores through the MMU (a fatal trap if unmapped) ----
def kread(kva: int, length: int) -> bytes:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    return hw.call(Op.KLOAD, site(), kva, length)  # type: ignore[no-any-return]


def kread_probe(kva: int, length: int) -> bytes | None:
    """``kread``, or None where ``kva`` is not mapped (instead of a fatal trap)."""
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    ok, value = hw.probe(Op.KLOAD, site(), kva, length)
    return value if ok else None  # type: ignore[no-any-return]


def kwrite(kva: int, data: bytes) -> None:
    hw = pcpu.hw
    hw.counters.mem_ops += 1
    hw.post(Op.KSTORE, site(), kva, data)


def kread_u64(kva: int) -> int:
    return int.from_bytes(kread(kva, 8), "little")


def kwrite_u64(kva: int, value: int) -> None:
    kwrite(kva, (value & (2**64 - 1)).to_bytes(8, "little"))


def kbzero(kva: int, length: int) -> None:
    kwrite(kva, bytes(length))


def kbcopy(src: int, dst: int, length: int) -> None:
    kwrite(dst, kread(src, length))


def kextract(kva: int) -> int:
    """The frame mapped at ``kva``, or -1 (pmap_kextract, which cannot trap)."""
    return bus_call(Op.KPROBE, kva)  # type: ignore[no-any-return]
