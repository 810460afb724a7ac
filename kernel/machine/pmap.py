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

from smp.kernel import param
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kstruct import KObj
from smp.kernel.vm.swap_pager import vm_pager_get_pages
from smp.kernel.vm.vm import (OBJT_DEFAULT, VM_ALLOC_NORMAL, VM_ALLOC_RETRY, VM_ALLOC_WIRED,
                              VM_PAGER_OK, VM_PAGE_BITS_ALL)
from smp.kernel.vm import vm_kern
from smp.kernel.vm.vm_kern import kmem_alloc_nofault, kmem_free
from smp.kernel.vm.vm_object import vm_object_allocate, vm_object_deallocate
from smp.kernel.vm.vm_page import (vm_page_busy, vm_page_dirty, vm_page_free, vm_page_grab,
                                   vm_page_lock_queues, vm_page_lookup, vm_page_unlock_queues,
                                   vm_page_unwire, vm_page_wakeup, vm_page_wire)

KSTACK_PAGES = param.KSTACK_PAGES
PAGE_SIZE = param.PAGE_SIZE


def pmap_qenter(va: int, ms: list[KObj], count: int) -> None:
    frames = [m.phys_addr for m in ms[:count]]
    memory.mmu_enter(va, frames)


def pmap_qremove(va: int, count: int) -> None:
    memory.mmu_remove(va, count)


def pmap_kenter(va: int, frame: int) -> None:
    memory.mmu_enter(va, [frame])


def pmap_kremove(va: int) -> None:
    memory.mmu_remove(va, 1)


def pmap_pinit2(pmap: Any) -> None:
    """i386 copies the kernel's page directory entries into a new pmap; there are no
    user page tables here."""


def _pcb_stamp(td: KObj, ks: int) -> None:
    memory.kwrite_u64(ks, td.handle)


def pmap_new_thread(td: KObj) -> None:
    """Create the kernel stack of ``td``: its object, its virtual range, wired pages."""
    ksobj = vm_object_allocate(OBJT_DEFAULT, KSTACK_PAGES)
    ks = kmem_alloc_nofault(vm_kern.kernel_map,
                            (KSTACK_PAGES + param.KSTACK_GUARD_PAGES) * PAGE_SIZE)
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
    kmem_free(vm_kern.kernel_map, ks - param.KSTACK_GUARD_PAGES * PAGE_SIZE,
              (KSTACK_PAGES + param.KSTACK_GUARD_PAGES) * PAGE_SIZE)
    vm_object_deallocate(ksobj)
    td.update(td_kstack_obj=None, td_kstack=0)


def pmap_swapout_thread(td: KObj) -> None:
    """Let the pages of ``td``'s kernel stack be paged out (5.0 i386)."""
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
