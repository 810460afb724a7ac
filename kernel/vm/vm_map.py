"""Address maps and address spaces, after FreeBSD 5.0 ``vm/vm_map.c`` (the part the port uses).

A ``vm_map`` is a sorted list of ``vm_map_entry`` ranges, each backed by a VM object with a
protection, an inheritance and a wiring count. A ``vmspace`` is a process's address space:
its map, its reference counts (``vm_refcnt``: users; ``vm_exitingcnt``: exited but unreaped
processes) and ``vm_swrss``. The kernel's own map (``kernel_map``) hands out kernel virtual
addresses for U-areas and kernel stacks.

Locks: a map is locked with its lockmgr lock (``vm_map_lock``, ``vm_map_trylock`` and, as in
late 2002, an *exclusive* ``vm_map_lock_read`` for user maps); the refcounts are plain ints
serialised by Giant (key ``m``).

PORT: in C ``struct vm_map`` is embedded in ``struct vmspace``; here the vmspace points to
its map (``vm.vm_map``), so ``&vm->vm_map`` costs one load. The i386 pmap's resident count
is replaced by the resident pages of the map's objects (``vmspace_resident_count``).
``vmspace_fork`` copies the pages of COPY-inherited entries at fork instead of sharing them
copy-on-write (there are no user page tables to write-protect); memory pressure from fork
is therefore higher than in FreeBSD, never lower.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.kern.kern_lock import LK_EXCLUSIVE, LK_NOWAIT, LK_RELEASE, lockinit, lockmgr
from smp.kernel.kern.kern_mutex import KASSERT
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import F, KObj, KStruct, TAILQ_FOREACH, TAILQ_INSERT_TAIL, TAILQ_REMOVE
from smp.kernel.sys.param import PVM
from smp.kernel.vm.vm import (FALSE, KERN_INVALID_ADDRESS, KERN_NO_SPACE, KERN_SUCCESS,
                              OBJT_DEFAULT, TRUE, VM_INHERIT_COPY, VM_INHERIT_NONE,
                              VM_INHERIT_SHARE, VM_PROT_ALL, atop)
from smp.kernel.vm.vm_object import vm_object_allocate, vm_object_deallocate, vm_object_reference

VM_MIN_ADDRESS = 0x00001000
VM_MAXUSER_ADDRESS = 0xBFBFE000
VM_MIN_KERNEL_ADDRESS = 0xC0000000
VM_MAX_KERNEL_ADDRESS = 0xFF800000

struct_vm_map = KStruct("vm_map", [
    F("entries", "list", "l"),              # (l) the map lock
    F("lock", "lockmgr"),
    F("min_offset", "int", "b"),
    F("max_offset", "int", "b"),
    F("nentries", "int", "l"),
    F("size", "int", "l"),
    F("timestamp", "int", "l"),
    F("system_map", "int", "b"),
    F("first_free", "int", "l"),            # PORT: allocation hint (vm_map's first_free)
], doc="an address map (vm/vm_map.h)")

struct_vm_map_entry = KStruct("vm_map_entry", [
    F("start", "int", "l"),
    F("end", "int", "l"),
    F("object", "ptr:vm_object", "l"),
    F("offset", "int", "l"),                # in pages
    F("protection", "int", "l"),
    F("max_protection", "int", "l"),
    F("inheritance", "int", "l", VM_INHERIT_COPY),
    F("wired_count", "int", "l"),
    F("eflags", "int", "l"),
], doc="one range of an address map")

struct_vmspace = KStruct("vmspace", [
    F("vm_map", "ptr:vm_map", "b"),
    F("vm_refcnt", "int", "m"),
    F("vm_exitingcnt", "int", "m"),
    F("vm_swrss", "int", "m"),
    F("vm_shm", "int", "m"),
    F("vm_freed", "int", "m"),              # PORT: set when destroyed, for the checks
], doc="a process address space (vm/vm_map.h)")

# vm_refcnt, for the liveness detector (smp.machine.hangs): a count of references, each
# held by a process's p_vmspace (vmspace_alloc's 1, vm_forkproc's RFMEM share; dropped by
# exit1 and vmspace_unshare's vmspace_free) or for a while by a thread of its own (the vm
# daemon's, in swapout_procs, dropped by vmspace_free). A vmspace whose count stays above
# 0 with no process on allproc pointing to it is a reference never dropped: it is never
# freed. (vm_exitingcnt, the zombies' count, goes with the reaping: not registered.)
VM_REFS: dict[str, dict[str, str]] = {
    "vm_refcnt": {"holder": "p_vmspace",
                  "what": "a vm_refcnt raise without its vmspace_free or exit"},
}


def vm_refs_register(_: Any) -> None:
    """BSP, at boot: vm_refcnt, as the liveness detector's count of references."""
    md.register("refs", VM_REFS)


SYSINIT("vm_refs", SI_SUB.SI_SUB_VM, SI_ORDER.SI_ORDER_ANY, vm_refs_register)


# -- map locks -------------------------------------------------------------------------------
@md.site_transparent
def vm_map_lock(map_: KObj) -> None:
    lockmgr(map_.lock, LK_EXCLUSIVE)
    map_.timestamp += 1


@md.site_transparent
def vm_map_unlock(map_: KObj) -> None:
    lockmgr(map_.lock, LK_RELEASE)


@md.site_transparent
def vm_map_lock_read(map_: KObj) -> None:
    # In late 2002 the "read" lock of a user map was exclusive (FREEBSD.md).
    lockmgr(map_.lock, LK_EXCLUSIVE)


@md.site_transparent
def vm_map_unlock_read(map_: KObj) -> None:
    lockmgr(map_.lock, LK_RELEASE)


@md.site_transparent
def vm_map_trylock(map_: KObj) -> int:
    """Try to lock ``map_`` exclusively without sleeping: TRUE or FALSE (never
    order-checked, never part of a deadlock)."""
    if lockmgr(map_.lock, LK_EXCLUSIVE | LK_NOWAIT) != 0:
        return FALSE
    map_.timestamp += 1
    return TRUE


# -- maps and entries ------------------------------------------------------------------------
def vm_map_create(min_: int, max_: int, system: bool = False) -> KObj:
    m = struct_vm_map.new(min_offset=min_, max_offset=max_, system_map=int(system))
    lockinit(m.lock, PVM, "user map" if not system else "kernel map", 0, 0)
    return m


def vm_map_max(map_: KObj) -> int:
    return map_.max_offset  # type: ignore[no-any-return]


def _entry_list(map_: KObj) -> list[int]:
    return memory.list_items(map_.entries)


def vm_map_lookup_entry(map_: KObj, address: int) -> KObj | None:
    """The entry containing ``address`` (map locked).
    PORT: the walk of the sorted entry list is one request (LIST_SEARCH) where FreeBSD
    walked from a hint; the map lock makes the two the same."""
    return struct_vm_map_entry.at(memory.list_search(map_.entries, "start", "end", address))


def vm_map_check_protection(map_: KObj, start: int, end: int, protection: int) -> int:
    """TRUE if ``[start, end)`` is entirely mapped with at least ``protection``."""
    vm_map_lock_read(map_)
    entry = vm_map_lookup_entry(map_, start)
    if entry is None:
        vm_map_unlock_read(map_)
        return FALSE
    ok = FALSE
    addr = start
    for e in _entries_from(map_, entry):
        s, en, prot = e.load("start", "end", "protection")
        if addr < s or (prot & protection) != protection:
            break                          # a hole, or not enough protection
        addr = en
        if addr >= end:
            ok = TRUE
            break
    vm_map_unlock_read(map_)
    return ok


def _entries_from(map_: KObj, first: KObj) -> Any:
    seen = False
    for e in TAILQ_FOREACH(map_.entries, struct_vm_map_entry):
        if e == first:
            seen = True
        if seen:
            yield e


def vm_map_findspace(map_: KObj, start: int, length: int) -> int:
    """The lowest address >= ``start`` with ``length`` free bytes, or -1 (map locked).
    Starts at ``first_free`` (the end of the last allocation) and wraps around once."""
    lo, hint, hi = map_.load("min_offset", "first_free", "max_offset")
    spans = [memory.loadn(h, ["start", "end"]) for h in _entry_list(map_)]
    for begin in (max(start, lo, hint), max(start, lo)):
        addr = begin
        for s, en in spans:
            if en <= addr:
                continue
            if addr + length <= s:
                break
            addr = en
        if addr + length <= hi:
            map_.first_free = addr + length
            return addr
    return -1


def vm_map_insert(map_: KObj, obj: KObj | None, offset: int, start: int, end: int,
                  prot: int, maxprot: int, inheritance: int = VM_INHERIT_COPY) -> int:
    """Add the entry ``[start, end)`` backed by ``obj`` (map locked; entries kept sorted)."""
    following = []
    for h in _entry_list(map_):
        s, en = memory.loadn(h, ["start", "end"])
        if s < end and start < en:
            return KERN_NO_SPACE
        if s >= end:
            following.append(struct_vm_map_entry.at(h))
    entry = struct_vm_map_entry.new(start=start, end=end, object=obj, offset=offset,
                                    protection=prot, max_protection=maxprot,
                                    inheritance=inheritance)
    # PORT: the server's lists insert at the ends only; keep the order by moving the
    # entries that follow the new one behind it.
    for e in following:
        TAILQ_REMOVE(map_.entries, e)
    TAILQ_INSERT_TAIL(map_.entries, entry)
    for e in following:
        TAILQ_INSERT_TAIL(map_.entries, e)
    map_.update(nentries=map_.nentries + 1, size=map_.size + (end - start))
    return KERN_SUCCESS


def vm_map_find(map_: KObj, obj: KObj | None, offset: int, addr: int, length: int,
                prot: int = VM_PROT_ALL, maxprot: int = VM_PROT_ALL,
                inheritance: int = VM_INHERIT_COPY) -> tuple[int, int]:
    """Find space for ``length`` bytes at or above ``addr`` and map ``obj`` there."""
    vm_map_lock(map_)
    start = vm_map_findspace(map_, addr, length)
    if start < 0:
        vm_map_unlock(map_)
        return KERN_NO_SPACE, 0
    rv = vm_map_insert(map_, obj, offset, start, start + length, prot, maxprot, inheritance)
    vm_map_unlock(map_)
    return rv, start


def vm_map_delete(map_: KObj, start: int, end: int) -> int:
    """Remove the entries within ``[start, end)`` and drop their objects (map locked).
    PORT: entries are removed whole (no clipping); callers remove whole entries."""
    from smp.kernel.vm.vm_fault import vm_fault_unwire   # cycle: faults walk maps
    for e in list(TAILQ_FOREACH(map_.entries, struct_vm_map_entry)):
        s, en, wired = e.load("start", "end", "wired_count")
        if en <= start or s >= end:
            continue
        if wired:
            vm_fault_unwire(map_, s, en)
        obj = e.object
        TAILQ_REMOVE(map_.entries, e)
        map_.update(nentries=map_.nentries - 1, size=map_.size - (en - s))
        e.free()
        vm_object_deallocate(obj)
    return KERN_SUCCESS


def vm_map_remove(map_: KObj, start: int, end: int) -> int:
    vm_map_lock(map_)
    rv = vm_map_delete(map_, start, end)
    vm_map_unlock(map_)
    return rv


def vm_map_wire(map_: KObj, start: int, end: int, user_wire: int) -> int:
    """Fault in and wire every page of ``[start, end)`` (vslock)."""
    from smp.kernel.vm.vm_fault import vm_fault_wire   # cycle: faults walk maps
    vm_map_lock(map_)
    entries = []
    addr = start
    for e in TAILQ_FOREACH(map_.entries, struct_vm_map_entry):
        s, en = e.load("start", "end")
        if en <= start or s >= end:
            continue
        if s > addr:
            break
        entries.append(e)
        addr = en
    if addr < end:
        vm_map_unlock(map_)
        return KERN_INVALID_ADDRESS
    for e in entries:
        e.wired_count += 1
    vm_map_unlock(map_)
    return vm_fault_wire(map_, start, end)


def vm_map_unwire(map_: KObj, start: int, end: int, user_wire: int) -> int:
    from smp.kernel.vm.vm_fault import vm_fault_unwire   # cycle: faults walk maps
    vm_map_lock(map_)
    for e in TAILQ_FOREACH(map_.entries, struct_vm_map_entry):
        s, en, w = e.load("start", "end", "wired_count")
        if en <= start or s >= end:
            continue
        if w <= 0:
            md.panic(f"vm_map_unwire: entry {e} is not wired")
        e.wired_count = w - 1
    vm_fault_unwire(map_, start, end)
    vm_map_unlock(map_)
    return KERN_SUCCESS


# -- vmspaces --------------------------------------------------------------------------------
def vmspace_alloc(min_: int = VM_MIN_ADDRESS, max_: int = VM_MAXUSER_ADDRESS) -> KObj:
    md.pcpu.count("vmspaces_allocated")
    return struct_vmspace.new(vm_map=vm_map_create(min_, max_), vm_refcnt=1)


def vmspace_pmap(vm: KObj) -> KObj:
    """PORT: no user page tables; the vmspace stands for its pmap."""
    return vm


def vmspace_resident_count(vm: KObj) -> int:
    total = 0
    for e in TAILQ_FOREACH(vm.vm_map.entries, struct_vm_map_entry):
        obj = e.object
        if obj is not None:
            total += obj.resident_page_count
    return total


def vmspace_dofree(vm: KObj) -> None:
    """Destroy an address space nobody uses any more (Giant)."""
    map_ = vm.vm_map
    vm_map_lock(map_)
    vm_map_delete(map_, map_.min_offset, map_.max_offset)
    vm_map_unlock(map_)
    vm.vm_freed = 1
    md.pcpu.count("vmspaces_freed")
    map_.free()
    vm.free()


def vmspace_free(vm: KObj) -> None:
    """Drop a reference to ``vm``; the last user with no exiting process frees it."""
    refcnt, exiting = vm.load("vm_refcnt", "vm_exitingcnt")
    if refcnt == 0:
        md.panic("vmspace_free: attempt to free already freed vmspace")
    refcnt -= 1
    vm.vm_refcnt = refcnt
    if refcnt == 0 and exiting == 0:
        vmspace_dofree(vm)


def vmspace_exitfree(p: KObj) -> None:
    """wait(2)'s half: the reaped process lets go of its address space."""
    vm = p.p_vmspace
    p.p_vmspace = None
    KASSERT(vm is not None, "vmspace_exitfree: a zombie with no vmspace")
    exiting = vm.vm_exitingcnt - 1
    KASSERT(exiting >= 0, f"vmspace_exitfree: vm_exitingcnt {exiting} < 0")
    vm.vm_exitingcnt = exiting
    if vm.vm_refcnt == 0 and exiting == 0:
        vmspace_dofree(vm)


def vmspace_fork(vm1: KObj) -> KObj:
    """A copy of ``vm1`` for a child: SHARE entries share the object, COPY entries get a
    copy of every page (see PORT above), NONE entries are left out. ``vm1``'s map is
    locked while it is copied."""
    from smp.kernel.vm.vm_fault import vm_object_copy_pages   # cycle: faults walk maps
    old_map = vm1.vm_map
    vm_map_lock(old_map)
    vm2 = vmspace_alloc(old_map.min_offset, old_map.max_offset)
    new_map = vm2.vm_map
    for e in TAILQ_FOREACH(old_map.entries, struct_vm_map_entry):
        start, end, inh, prot, maxprot, offset = e.load(
            "start", "end", "inheritance", "protection", "max_protection", "offset")
        obj = e.object
        if inh == VM_INHERIT_NONE:
            continue
        if inh == VM_INHERIT_SHARE:
            vm_object_reference(obj)
            nobj = obj
        else:
            nobj = vm_object_allocate(OBJT_DEFAULT, atop(end - start))
            if obj is not None:
                vm_object_copy_pages(obj, nobj)
        vm_map_insert(new_map, nobj, offset, start, end, prot, maxprot, inh)
    vm_map_unlock(old_map)
    return vm2


def vmspace_unshare(p: KObj) -> None:
    """Give ``p`` a private copy of a shared address space (rfork without RFMEM)."""
    oldvm = p.p_vmspace
    if oldvm.vm_refcnt == 1:
        return
    newvm = vmspace_fork(oldvm)
    p.p_vmspace = newvm
    from smp.kernel.machine.pmap import pmap_pinit2   # cycle: kernel stacks live in maps
    pmap_pinit2(vmspace_pmap(newvm))
    vmspace_free(oldvm)


__all__ = ["vm_map_lock", "vm_map_unlock", "vm_map_trylock", "vm_map_lock_read",
           "vm_map_unlock_read", "vm_map_create", "vm_map_max", "vm_map_lookup_entry",
           "vm_map_check_protection", "vm_map_find", "vm_map_insert", "vm_map_remove",
           "vm_map_wire", "vm_map_unwire", "vmspace_alloc", "vmspace_free",
           "vmspace_exitfree", "vmspace_fork", "vmspace_unshare", "vmspace_pmap",
           "vmspace_resident_count"]
