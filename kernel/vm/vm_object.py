"""VM objects: the containers of pages, after FreeBSD ``vm/vm_object.c`` (the part the port uses).

An object holds the resident pages of one memory region on its ``memq`` (a list in server
memory) and counts them in ``resident_page_count``. An ``OBJT_DEFAULT`` object becomes
``OBJT_SWAP`` the first time the pageout daemon writes one of its pages to swap
(``swap_pager_putpages``); its swap blocks are ``struct swblk`` records on ``swblist``.

Locking: FreeBSD 5.0 had no object lock yet; objects were protected by Giant (key ``m``),
and page membership by the page queues mutex in places. The port does the same.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.kern.kern_mutex import KASSERT
from smp.kernel.machine import cpu as md
from smp.kernel.sys.kstruct import F, KStruct, TAILQ_FIRST, TAILQ_FOREACH
from smp.kernel.vm.swap_pager import swap_pager_freespace
from smp.kernel.vm.vm import OBJT_DEFAULT
from smp.kernel.vm.vm_page import (struct_vm_page, vm_page_busy, vm_page_free, vm_page_lock_queues,
                                   vm_page_sleep_busy, vm_page_unlock_queues)

struct_vm_object = KStruct("vm_object", [
    F("memq", "list", "m"),                 # resident pages
    F("swblist", "list", "m"),              # swap blocks (struct swblk)
    F("pagehash", "map", "m"),              # pindex -> page (vm_page_buckets)
    F("swhash", "map", "m"),                # pindex -> swblk (swap_pager's hash)
    F("type", "int", "m", OBJT_DEFAULT),
    F("size", "int", "m"),                  # in pages
    F("ref_count", "int", "m", 1),
    F("resident_page_count", "int", "m"),
    F("generation", "int", "m"),
    F("flags", "int", "m"),
    F("swp_bcount", "int", "m"),            # swap blocks in use
], doc="a VM object (vm/vm_object.h)")


def vm_object_allocate(type_: int, size: int) -> Any:
    """A new object of ``size`` pages with one reference (Giant)."""
    md.pcpu.count("vm_objects_allocated")
    return struct_vm_object.new(type=type_, size=size, ref_count=1)


def vm_object_reference(obj: Any) -> None:
    if obj is not None:
        obj.ref_count += 1


def vm_object_deallocate(obj: Any) -> None:
    """Drop a reference; the last one terminates the object (frees its pages and swap)."""
    if obj is None:
        return
    n = obj.ref_count
    KASSERT(n > 0, f"vm_object_deallocate: object {obj} has no references")
    if n > 1:
        obj.ref_count = n - 1
        return
    obj.ref_count = 0
    vm_object_terminate(obj)


def vm_object_terminate(obj: Any) -> None:
    while True:
        m = TAILQ_FIRST(obj.memq, struct_vm_page)
        if m is None:
            break
        if vm_page_sleep_busy(m, True, "vmotrm"):
            continue
        vm_page_lock_queues()
        vm_page_busy(m)
        if m.wire_count:
            md.panic(f"vm_object_terminate: freeing wired page {m} "
                     f"(object {obj} pindex {m.pindex})")
        vm_page_free(m)
        vm_page_unlock_queues()
    swap_pager_freespace(obj)
    md.pcpu.count("vm_objects_freed")
    obj.free()


def vm_object_pages(obj: Any) -> list[Any]:
    return list(TAILQ_FOREACH(obj.memq, struct_vm_page))
