"""Page faults and wiring, after FreeBSD ``vm/vm_fault.c`` (the part the port uses).

``vm_fault_page`` finds the page behind a user address, bringing it in if needed: from the
object's resident pages, from swap (``vm_pager_get_pages``), or a fresh zero-filled page,
waiting for memory (``VM_WAIT``) when there is none. User programs touch their memory
through it: there are no user page tables here, so every user access is a lookup, and the
page is *held* for the access so that the pageout daemon cannot take it meanwhile (the
role the pmap mapping plays in FreeBSD).

Callers hold Giant (FreeBSD 5.0's vm_fault took it itself).
"""

from __future__ import annotations

from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kstruct import KObj
from smp.kernel.vm.swap_pager import swap_pager_copy, swap_pager_haspage, vm_pager_get_pages
from smp.kernel.vm.vm import (KERN_FAILURE, KERN_INVALID_ADDRESS, KERN_PROTECTION_FAILURE,
                              KERN_SUCCESS, VM_ALLOC_NORMAL, VM_PAGER_OK, VM_PAGE_BITS_ALL,
                              VM_PROT_READ, VM_PROT_WRITE, atop, trunc_page)
from smp.kernel.vm.vm_map import vm_map_lock_read, vm_map_lookup_entry, vm_map_unlock_read
from smp.kernel.vm.vm_object import struct_vm_object
from smp.kernel.vm.vm_page import (PG_BUSY, VM_WAIT, vm_page_activate, vm_page_alloc, vm_page_dirty,
                                   vm_page_lock_queues, vm_page_lookup, vm_page_sleep_busy,
                               vm_page_unlock_queues, vm_page_unwire, vm_page_wakeup, vm_page_wire)


def vm_fault_page(map_: KObj, vaddr: int, fault_type: int, wire: bool = False,
                  hold: bool = False) -> tuple[int, KObj | None]:
    """Make the page at ``vaddr`` resident; return it wired or held as asked."""
    while True:                                             # RetryFault:
        vm_map_lock_read(map_)
        entry = vm_map_lookup_entry(map_, vaddr)
        if entry is None:
            vm_map_unlock_read(map_)
            return KERN_INVALID_ADDRESS, None
        start, prot, offset, objh = entry.load("start", "protection", "offset", "object")
        if (prot & fault_type) != fault_type:
            vm_map_unlock_read(map_)
            return KERN_PROTECTION_FAILURE, None
        obj = struct_vm_object.at(objh)
        pindex = offset + atop(trunc_page(vaddr) - start)
        m = vm_page_lookup(obj, pindex)
        if m is not None:
            flags, busy = m.load("flags", "busy")
            if flags & PG_BUSY or busy:
                vm_map_unlock_read(map_)
                vm_page_sleep_busy(m, True, "vmpfw")
                continue
            m.flags = flags | PG_BUSY                       # vm_page_busy(m)
        else:
            m = vm_page_alloc(obj, pindex, VM_ALLOC_NORMAL)
            if m is None:
                vm_map_unlock_read(map_)
                VM_WAIT()
                continue
            if swap_pager_haspage(obj, pindex):
                md.pcpu.count("pageins")
                if vm_pager_get_pages(obj, [m], 1, 0) != VM_PAGER_OK:
                    vm_page_wakeup(m)
                    vm_map_unlock_read(map_)
                    return KERN_FAILURE, None
            else:
                memory.page_zero(m.phys_addr)
                m.valid = VM_PAGE_BITS_ALL
                md.pcpu.count("zero_fills")
        vm_page_lock_queues()
        if wire:
            vm_page_wire(m)
        else:
            vm_page_activate(m)
        if hold:
            m.inc("hold_count", 1)                          # vm_page_hold(m)
        vm_page_unlock_queues()
        if fault_type & VM_PROT_WRITE:
            vm_page_dirty(m)
        vm_page_wakeup(m)
        vm_map_unlock_read(map_)
        return KERN_SUCCESS, m


def vm_fault_wire(map_: KObj, start: int, end: int) -> int:
    """Fault in and wire each page of ``[start, end)`` (the entries are marked wired)."""
    va = trunc_page(start)
    while va < end:
        rv, _ = vm_fault_page(map_, va, VM_PROT_READ, wire=True)
        if rv != KERN_SUCCESS:
            if va > start:
                vm_map_lock_read(map_)
                vm_fault_unwire(map_, start, va)
                vm_map_unlock_read(map_)
            return rv
        va += 4096
    return KERN_SUCCESS


def vm_fault_unwire(map_: KObj, start: int, end: int) -> None:
    """Unwire the pages of ``[start, end)`` (map locked by the caller)."""
    va = trunc_page(start)
    while va < end:
        entry = vm_map_lookup_entry(map_, va)
        if entry is not None:
            estart, offset = entry.load("start", "offset")
            obj = entry.object
            m = vm_page_lookup(obj, offset + atop(va - estart)) if obj is not None else None
            if m is not None:
                vm_page_lock_queues()
                vm_page_unwire(m, 1)
                vm_page_unlock_queues()
        va += 4096


def vm_object_copy_pages(src: KObj, dst: KObj) -> None:
    """Copy every page of ``src`` into the new object ``dst`` (fork of a COPY entry):
    resident pages frame to frame, pages on swap block to block. After any sleep (a busy
    page, VM_WAIT) the page is looked up again: while this thread slept, without Giant,
    the pageout daemon could write the page it had found to swap, free it, and the frame
    go to another process (a copy from it gave the child that process's memory: the
    sharer's 'user page lost its contents' in a stress campaign)."""
    size = src.size
    for pindex in range(size):
        while True:
            m = vm_page_lookup(src, pindex)
            if m is None:
                swap_pager_copy(src, dst, pindex)
                break
            if vm_page_sleep_busy(m, True, "vmcopy"):
                continue
            nm = vm_page_alloc(dst, pindex, VM_ALLOC_NORMAL)
            if nm is None:
                VM_WAIT()
                continue
            memory.page_copy(m.phys_addr, nm.phys_addr)
            nm.update(valid=VM_PAGE_BITS_ALL, dirty=VM_PAGE_BITS_ALL)
            vm_page_lock_queues()
            vm_page_activate(nm)
            vm_page_unlock_queues()
            vm_page_wakeup(nm)
            break


def vm_page_release(m: KObj) -> None:
    """The end of a user access: drop the hold taken by vm_fault_page."""
    vm_page_lock_queues()
    m.inc("hold_count", -1)                                 # vm_page_unhold(m)
    vm_page_unlock_queues()


__all__ = ["vm_fault_page", "vm_fault_wire", "vm_fault_unwire", "vm_object_copy_pages",
           "vm_page_release"]
