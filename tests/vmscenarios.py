"""Kernel-side scenarios of the vm_glue tests (tests/test_vm_glue.py): code that runs inside
the simulated CPUs, started by SYSINITs, and reports what it saw through kernel counters.

Conventions (on top of helpers.py):

* ``check(name, cond)`` counts ``t_ok_<name>`` or ``t_bad_<name>`` (summed over CPUs into
  ``report["kernel"]``); ``value(name, v)`` hands a number back as ``t_val_<name>``. The
  host side asserts on them (test_vm_glue.assert_checks).
* A scenario is a user process (:func:`boot_fork`: forked at boot from the CPU's boot
  thread, as each CPU's init is, so it has an address space, a U-area and a kernel stack)
  or a kernel thread (:func:`boot_kthread`), pinned to the CPU that starts it.
* Scenarios hand each other pids and progress through one shared record (``vmtest``,
  published by the BSP; :func:`shared`). Each part counts itself done (:func:`done`) and
  a :func:`coordinator` thread ends the run when all are, or panics when they are not
  done in time (a stuck scenario fails; none can hang). Kernel threads that share a CPU
  with a user process wait with :func:`nap_until`, never by spinning: a kernel thread's
  priority always beats a user process's.

Everything here is imported by the pytest process before the machine forks its CPUs, so
closures and the ``vmtest`` declaration reach every CPU (KStruct registry).
"""

from __future__ import annotations

from typing import Any, Callable

from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock, mtx_lock_spin, mtx_unlock, mtx_unlock_spin
from smp.kernel.kern.kern_proc import FIRST_THREAD_IN_PROC, FOREACH_PROC_IN_SYSTEM
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kstruct import F, KStruct
from smp.kernel.sys.proc import TDI

import helpers

PAGE = param.PAGE_SIZE

# The shared record of one scenario machine.
struct_vmtest = KStruct("vmtest", [
    F("v_done", "int"),         # scenario parts finished (atomic)
    F("v_pid", "int"),          # the pid of the process under test
    F("v_phase", "int"),        # hand-shake between the parts
    F("v_aux", "int"),          # a sleep channel (its address) or a flag
], doc="the vm_glue tests' shared state")

SYM = "vmtest"


def publish() -> Any:
    """The BSP SYSINIT that makes and publishes the shared record."""
    return helpers.bsp_init(SYM, lambda: struct_vmtest.new())


def shared() -> Any:
    return helpers.lookup(SYM, struct_vmtest)


# -- reporting --------------------------------------------------------------------------------
def check(name: str, cond: object, detail: str = "") -> bool:
    """Count ``t_ok_<name>`` or ``t_bad_<name>``; a failure is also noted as a finding of
    detector "test" with ``detail`` (findings reach report["findings"]; the kernel console
    does not reach the report), so that the host side can say what went wrong."""
    if cond:
        helpers.result(f"t_ok_{name}")
    else:
        helpers.result(f"t_bad_{name}")
        md.pcpu.note_finding("test", f"check {name} failed: {detail}", detector="test")
    return bool(cond)


def value(name: str, v: int) -> None:
    helpers.result(f"t_val_{name}", int(v))


def part_done(total: int) -> None:
    """This part of the scenario is over; the last of ``total`` parts ends the run."""
    t = shared()
    n = memory.atomic_add(t.handle, "v_done", 1)
    if n >= total:
        helpers.finish("scenario done")


# -- starting scenarios at boot ---------------------------------------------------------------
def boot_fork(name: str, main: Callable[[], None], cpu: int = 0) -> Any:
    """A per-CPU SYSINIT that, on ``cpu`` only, forks a user process running ``main``."""
    def init(_: Any) -> None:
        from smp.kernel.userland import libc
        if md.pcpu.cpuid == cpu:
            libc.fork(main, name)
    return helpers.sysinit(f"vmt-fork-{name}", init, percpu=True, order="SI_ORDER_ANY")


def boot_kthread(name: str, fn: Callable[[], None], cpu: int = 0) -> Any:
    """A per-CPU SYSINIT that, on ``cpu`` only, starts a kernel thread running ``fn``."""
    def init(_: Any) -> None:
        if md.pcpu.cpuid == cpu:
            helpers.kthread(fn, name)
    return helpers.sysinit(f"vmt-kthread-{name}", init, percpu=True, order="SI_ORDER_ANY")


# -- kernel-side helpers ------------------------------------------------------------------------
def giant() -> Any:
    return kern_globals.G.Giant


def find_proc(pid: int = -1, comm: str = "") -> Any:
    """The proc with ``pid`` (or named ``comm``) on allproc (not locked), or None."""
    G = kern_globals.G
    found = None
    sx_slock(G.allproc_lock)
    for p in FOREACH_PROC_IN_SYSTEM():
        if p.p_pid == pid or (comm and p.p_comm == comm):
            found = p
            break
    sx_sunlock(G.allproc_lock)
    return found


def sflag(p: Any) -> int:
    G = kern_globals.G
    mtx_lock_spin(G.sched_lock)
    v = p.p_sflag
    mtx_unlock_spin(G.sched_lock)
    return int(v)


def slptime(p: Any) -> int:
    """The smallest kg_slptime of ``p``'s ksegrps (what swapout_procs compares)."""
    G = kern_globals.G
    from smp.kernel.kern.kern_proc import FOREACH_KSEGRP_IN_PROC
    mtx_lock_spin(G.sched_lock)
    v = min((kg.kg_slptime for kg in FOREACH_KSEGRP_IN_PROC(p)), default=0)
    mtx_unlock_spin(G.sched_lock)
    return int(v)


def thread_inhibitors(p: Any) -> int:
    td = FIRST_THREAD_IN_PROC(p)
    return int(td.td_inhibitors) if td is not None else -1


def is_sleeping(p: Any) -> bool:
    return bool(thread_inhibitors(p) & TDI.TDI_SLEEPING)


def uarea_mapped(p: Any) -> bool:
    return memory.kextract(p.p_uarea) != -1


def kstack_mapped(p: Any) -> bool:
    td = FIRST_THREAD_IN_PROC(p)
    return memory.kextract(td.td_kstack) != -1


def uarea_wired(p: Any) -> bool:
    from smp.kernel.vm import vm_page as vp
    vp.vm_page_lock_queues()
    m = vp.vm_page_lookup(p.p_upages_obj, 0)
    w = m is not None and m.wire_count > 0
    vp.vm_page_unlock_queues()
    return w


def buffer_pages(base: int, npages: int) -> list[Any]:
    """The vm_pages behind ``npages`` pages of the current process's mapping at ``base``
    (None where not resident)."""
    from smp.kernel.kern.kern_thread import curproc
    from smp.kernel.vm.vm import atop
    from smp.kernel.vm.vm_map import vm_map_lock_read, vm_map_lookup_entry, vm_map_unlock_read
    from smp.kernel.vm.vm_page import vm_page_lookup
    map_ = curproc().p_vmspace.vm_map
    vm_map_lock_read(map_)
    e = vm_map_lookup_entry(map_, base)
    start, offset = e.load("start", "offset")
    obj = e.object
    vm_map_unlock_read(map_)
    first = offset + atop(base - start)
    return [vm_page_lookup(obj, first + i) for i in range(npages)]


def wired_pages(base: int, npages: int) -> int:
    """How many of the buffer's pages have wire_count > 0 (Giant and the page queues lock
    held while looking)."""
    from smp.kernel.vm import vm_page as vp
    mtx_lock(giant())
    vp.vm_page_lock_queues()
    n = sum(1 for m in buffer_pages(base, npages) if m is not None and m.wire_count > 0)
    vp.vm_page_unlock_queues()
    mtx_unlock(giant())
    return n


def resident_pages(base: int, npages: int) -> int:
    mtx_lock(giant())
    n = sum(1 for m in buffer_pages(base, npages) if m is not None)
    mtx_unlock(giant())
    return n


def sleep_until(cond: Callable[[], bool], what: str, max_ticks: int) -> None:
    """In a user process: sleep a tick at a time until ``cond()``; panic after
    ``max_ticks``."""
    from smp.kernel.userland import libc
    start = md.pcpu.ticks
    while not cond():
        if md.pcpu.ticks - start > max_ticks:
            md.panic(f"test: timed out waiting for {what}")
        libc.sleep_ticks(1)




def pageout_proc_pages(p: Any) -> int:
    """Do to ``p``'s U-area and kernel stack pages what the pageout daemon does to a dirty
    inactive page (vm_pageout_scan): write it to swap and free it. Only pages that are not
    wired, busy or held are taken, so only a swapped-out process loses any. Returns how
    many pages went to swap."""
    from smp.kernel.kern.kern_proc import FOREACH_THREAD_IN_PROC
    from smp.kernel.sys.kstruct import TAILQ_FOREACH
    from smp.kernel.vm import vm_page as vp
    from smp.kernel.vm.swap_pager import vm_pager_put_page
    from smp.kernel.vm.vm import PG_BUSY, VM_PAGER_OK
    mtx_lock(giant())
    objs = [p.p_upages_obj] + [td.td_kstack_obj for td in FOREACH_THREAD_IN_PROC(p)]
    n = 0
    vp.vm_page_lock_queues()
    for obj in objs:
        for m in list(TAILQ_FOREACH(obj.memq, vp.struct_vm_page)):
            flags, busy, hold, wire, dirty = m.load("flags", "busy", "hold_count",
                                                    "wire_count", "dirty")
            if flags & PG_BUSY or busy or hold or wire:
                continue
            vp.vm_page_busy(m)
            if dirty and vm_pager_put_page(obj, m) != VM_PAGER_OK:
                vp.vm_page_wakeup(m)
                vp.vm_page_activate(m)
                continue
            vp.vm_page_free(m)
            n += 1
    vp.vm_page_unlock_queues()
    mtx_unlock(giant())
    return n


def swapout_procs_now(action: int) -> int:
    """Call swapout_procs(action) as the vm daemon does (Giant held); return how many
    processes this CPU swapped out meanwhile."""
    from smp.kernel.vm.vm_glue import swapout_procs
    before = md.pcpu.stats.get("swapouts", 0)
    mtx_lock(giant())
    swapout_procs(action)
    mtx_unlock(giant())
    return md.pcpu.stats.get("swapouts", 0) - before


def coordinator(nparts: int, max_ticks: int, what: str) -> Callable[[], None]:
    """A kernel thread body that ends the run once ``nparts`` parts are done, and panics
    (the run fails) if they are not done within ``max_ticks`` ticks: a stuck scenario is
    a failed one (a deadlock, a lost wakeup)."""
    def run() -> None:
        t = shared()
        helpers.wait_until(lambda: t.v_done >= nparts,
                           lambda: f"{what} ({t.v_done} of {nparts} parts done, "
                                   f"phase {t.v_phase})", max_ticks=max_ticks)
        helpers.finish("scenario done")
    return run


def done() -> None:
    """One part of a coordinated scenario is over."""
    memory.atomic_add(shared().handle, "v_done", 1)


def nap_until(cond: Callable[[], Any], what: str, max_ticks: int = 1500) -> None:
    """In a kernel thread: sleep a tick at a time until ``cond()``; panic after
    ``max_ticks``. Unlike helpers.wait_until this lets a user process on the same CPU run
    (a kernel thread's priority always beats a user process's)."""
    from smp.kernel.kern.kern_synch import tsleep
    from smp.kernel.kern.kern_thread import curthread
    from smp.kernel.sys.param import PWAIT
    start = md.pcpu.ticks
    chan = curthread().addr("td_wmesg")
    while not cond():
        if md.pcpu.ticks - start > max_ticks:
            md.panic(f"test: timed out waiting for {what}")
        tsleep(chan, PWAIT, "vmtnap", 1)
