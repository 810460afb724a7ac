"""The machine-dependent half of the pmap (i386 ``pmap.c`` of 5.0): kernel mappings and
the kernel stacks of threads.

Only kernel mappings exist here (DESIGN.md: user memory is reached by lookup, see
``vm_fault``): ``pmap_qenter``/``pmap_qremove`` enter and remove wired, unmanaged kernel
mappings in the MMU that the server holds, so an access through a removed mapping is a
fatal trap, as on the real machine.

A thread of a swappable process has a kernel stack: ``KSTACK_PAGES`` pages of its own
object, mapped at ``td_kstack`` above a guard page. Its first word holds the thread's id
(the "pcb"); ``cpu_switch`` reads it before it resumes the thread, so switching to a thread
whose stack is swapped out traps, and a stack that came back from swap wrong panics.

PORT: kernel threads (P_SYSTEM, never swapped) run without simulated stack pages.
"""

from __future__ import annotations

from typing import Any

from hw.protocol import Op
from kernel import param
from kernel.machine import cpu as md
from kernel.sys.kstruct import KObj
from kernel.vm.vm import (OBJT_DEFAULT, VM_ALLOC_NORMAL, VM_ALLOC_RETRY, VM_ALLOC_WIRED,
                          VM_PAGE_BITS_ALL, VM_PAGER_OK)

KSTACK_PAGES = param.KSTACK_PAGES
PAGE_SIZE = param.PAGE_SIZE


def pmap_qenter(va: int, ms: list[KObj], count: int) -> None:
    frames = [m.phys_addr for m in ms[:count]]
    md.bus_post(Op.KENTER, va, frames)


def pmap_qremove(va: int, count: int) -> None:
    md.bus_post(Op.KREMOVE, va, count)


def pmap_kenter(va: int, frame: int) -> None:
    md.bus_post(Op.KENTER, va, [frame])


def pmap_kremove(va: int) -> None:
    md.bus_post(Op.KREMOVE, va, 1)


def pmap_pinit2(pmap: Any) -> None:
    """i386 copies the kernel's page directory entries into a new pmap; there are no
    user page tables here."""


def _pcb_stamp(td: KObj, ks: int) -> None:
    md.kwrite_u64(ks, td.handle)


def pmap_new_thread(td: KObj) -> None:
    """Create the kernel stack of ``td``: its object, its virtual range, wired pages."""
    from kernel.vm.vm_kern import kernel_map, kmem_alloc_nofault
    from kernel.vm.vm_object import vm_object_allocate
    from kernel.vm.vm_page import vm_page_grab, vm_page_wakeup
    ksobj = vm_object_allocate(OBJT_DEFAULT, KSTACK_PAGES)
    ks = kmem_alloc_nofault(kernel_map, (KSTACK_PAGES + param.KSTACK_GUARD_PAGES) * PAGE_SIZE)
    if ks == 0:
        md.panic("pmap_new_thread: kstack allocation failed")
    ks += param.KSTACK_GUARD_PAGES * PAGE_SIZE
    td.update(td_kstack_obj=ksobj, td_kstack=ks)
    ma = []
    for i in range(KSTACK_PAGES):
        m = vm_page_grab(ksobj, i, VM_ALLOC_NORMAL | VM_ALLOC_RETRY | VM_ALLOC_WIRED)
        assert m is not None
        ma.append(m)
        vm_page_wakeup(m)
        m.valid = VM_PAGE_BITS_ALL
    pmap_qenter(ks, ma, KSTACK_PAGES)
    _pcb_stamp(td, ks)


def pmap_dispose_thread(td: KObj) -> None:
    """Free the kernel stack of a thread that is gone."""
    from kernel.vm.vm_kern import kernel_map, kmem_free
    from kernel.vm.vm_object import vm_object_deallocate
    from kernel.vm.vm_page import (vm_page_busy, vm_page_free, vm_page_lock_queues,
                                   vm_page_lookup, vm_page_unlock_queues, vm_page_unwire)
    ksobj = td.td_kstack_obj
    ks = td.td_kstack
    if ksobj is None:
        return
    for i in range(KSTACK_PAGES):
        m = vm_page_lookup(ksobj, i)
        if m is None:
            md.panic("pmap_dispose_thread: kstack already missing?")
        vm_page_lock_queues()
        vm_page_busy(m)
        vm_page_unwire(m, 0)
        vm_page_free(m)
        vm_page_unlock_queues()
    pmap_qremove(ks, KSTACK_PAGES)
    kmem_free(kernel_map, ks - param.KSTACK_GUARD_PAGES * PAGE_SIZE,
              (KSTACK_PAGES + param.KSTACK_GUARD_PAGES) * PAGE_SIZE)
    vm_object_deallocate(ksobj)
    td.update(td_kstack_obj=None, td_kstack=0)


def pmap_swapout_thread(td: KObj) -> None:
    """Let the pages of ``td``'s kernel stack be paged out (5.0 i386)."""
    from kernel.vm.vm_page import (vm_page_dirty, vm_page_lock_queues, vm_page_lookup,
                                   vm_page_unlock_queues, vm_page_unwire)
    ksobj = td.td_kstack_obj
    ks = td.td_kstack
    for i in range(KSTACK_PAGES):
        m = vm_page_lookup(ksobj, i)
        if m is None:
            md.panic("pmap_swapout_thread: kstack already missing?")
        vm_page_lock_queues()
        vm_page_dirty(m)
        vm_page_unwire(m, 0)
        vm_page_unlock_queues()
        pmap_kremove(ks + i * PAGE_SIZE)


def pmap_swapin_thread(td: KObj) -> None:
    """Bring ``td``'s kernel stack back in and wire it (5.0 i386)."""
    from kernel.vm.swap_pager import vm_pager_get_pages
    from kernel.vm.vm_page import (vm_page_grab, vm_page_lock_queues, vm_page_lookup,
                                   vm_page_unlock_queues, vm_page_wakeup, vm_page_wire)
    ksobj = td.td_kstack_obj
    ks = td.td_kstack
    for i in range(KSTACK_PAGES):
        m = vm_page_grab(ksobj, i, VM_ALLOC_NORMAL | VM_ALLOC_RETRY)
        assert m is not None
        pmap_kenter(ks + i * PAGE_SIZE, m.phys_addr)
        if m.valid != VM_PAGE_BITS_ALL:
            md.pcpu.count("kstack_pageins")
            rv = vm_pager_get_pages(ksobj, [m], 1, 0)
            if rv != VM_PAGER_OK:
                md.panic(f"pmap_swapin_thread: cannot get kstack for proc: "
                         f"{td.td_proc.p_pid}")
            m = vm_page_lookup(ksobj, i)
            m.valid = VM_PAGE_BITS_ALL
        vm_page_lock_queues()
        vm_page_wire(m)
        vm_page_wakeup(m)
        vm_page_unlock_queues()


def cpu_switch_check(lt: Any) -> None:
    """What cpu_switch reads of the next thread: its pcb, at the base of its kernel
    stack (sched_lock held). A swapped-out stack is a fatal trap, which names the
    thread; a corrupted one panics."""
    ks = lt.kstack
    if not ks:
        return
    pcb = md.kread_probe(ks, 8)
    if pcb is None:
        td = lt.td
        p = td.td_proc
        state, inhib = td.load("td_state", "td_inhibitors")
        pid, sflag, pstate = p.load("p_pid", "p_sflag", "p_state")
        md.panic(f"fatal trap 12 in cpu_switch: the kernel stack of thread {lt.name} "
                 f"(tid {lt.tid}, pid {pid}) is not mapped at {ks:#x}: td_state {state}, "
                 f"td_inhibitors {inhib:#x}, p_sflag {sflag:#x}, p_state {pstate}")
    tid = int.from_bytes(pcb, "little")
    if tid != lt.tid:
        md.panic(f"cpu_switch: kernel stack of thread {lt.name} holds {tid:#x}, "
                 f"not its pcb")
