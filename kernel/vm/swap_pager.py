"""The swap pager: pages of anonymous objects to the swap device and back, after FreeBSD
``vm/swap_pager.c`` and the dispatch of ``vm/vm_pager.c``.

A page written to swap gets a block on the device, recorded with the CRC-32 of the page
as it went out in a ``struct swblk`` on its object's ``swblist``. Reading it back checks
the CRC of what came in: a mismatch is counted (``checksum_errors``, an invariant of
every run) and the read fails, which panics its caller as a pager error would. The
device's own CRC of each transfer comes from the hardware (``hw/physmem.py``), so the
check covers the whole path: frame -> device -> frame.

Blocks are handed out from a free list, then from the never-used end of the device.
Locking: Giant (GIANT_REQUIRED), as swap_pager.c of 2002.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern.kern_synch import tsleep
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.param import PSWP
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import (F, HASH_INSERT, HASH_LOOKUP, HASH_REMOVE, KObj, KStruct,
                                    TAILQ_FIRST, TAILQ_INSERT_TAIL, TAILQ_REMOVE)
from smp.kernel.vm.vm import (OBJT_DEFAULT, OBJT_SWAP, VM_PAGE_BITS_ALL, VM_PAGER_ERROR,
                              VM_PAGER_FAIL, VM_PAGER_OK)

struct_swblk = KStruct("swblk", [
    F("sb_pindex", "int", "m"),
    F("sb_block", "int", "m"),
    F("sb_crc", "int", "m"),
], doc="one page of an object on the swap device")

struct_swdevt = KStruct("swdevt", [
    F("sw_nblks", "int", "m"),
    F("sw_used", "int", "m"),
    F("sw_next", "int", "m"),               # first never-used block
    F("sw_freelist", "list", "m"),          # struct swblk records of freed blocks
], doc="the swap device's allocation state")

swdev: KObj = None  # type: ignore[assignment]


def swap_attach() -> None:
    global swdev
    if swdev is None:
        swdev = struct_swdevt.at(memory.lookup("swdev"))


def swap_pager_init(_: Any) -> None:
    global swdev
    swdev = struct_swdevt.new(sw_nblks=param.swap_pages)
    memory.symbol("swdev", swdev.handle)


SYSINIT("swap_pager", SI_SUB.SI_SUB_VM, SI_ORDER.SI_ORDER_SECOND, swap_pager_init)


def _transfer_wait(m: KObj, wmesg: str, key: str) -> None:
    """The disk takes its time: the thread sleeps (giving up Giant) until the transfer of
    the busy page ``m`` is done, as swap_pager's I/O did ("swread", "swwrt")."""
    us = int(md.pcpu.config[key])
    if us > 0:
        tsleep(m.addr("busy"), PSWP, wmesg, max(us * param.hz // 1_000_000, 1))


def _swp_lookup(obj: KObj, pindex: int) -> KObj | None:
    return HASH_LOOKUP(obj.swhash, pindex, struct_swblk)


def _swp_insert(obj: KObj, sb: KObj, pindex: int) -> None:
    TAILQ_INSERT_TAIL(obj.swblist, sb)
    HASH_INSERT(obj.swhash, pindex, sb)


def _swp_alloc() -> int:
    """A free block, or -1 when the device is full."""
    sb = TAILQ_FIRST(swdev.sw_freelist, struct_swblk)
    if sb is not None:
        TAILQ_REMOVE(swdev.sw_freelist, sb)
        blk = sb.sb_block
        sb.free()
    else:
        nxt, nblks = swdev.load("sw_next", "sw_nblks")
        if nxt >= nblks:
            return -1
        swdev.sw_next = nxt + 1
        blk = nxt
    swdev.sw_used += 1
    return blk


def _swp_release(sb: KObj) -> None:
    TAILQ_INSERT_TAIL(swdev.sw_freelist, sb)
    swdev.sw_used -= 1


def swap_pager_haspage(obj: KObj, pindex: int) -> bool:
    return obj.type == OBJT_SWAP and _swp_lookup(obj, pindex) is not None


def swap_pager_putpage(obj: KObj, m: KObj) -> int:
    """Write ``m`` (busy, of ``obj``) to swap. VM_PAGER_OK leaves the page clean."""
    sb = _swp_lookup(obj, m.pindex) if obj.type == OBJT_SWAP else None
    if sb is None:
        blk = _swp_alloc()
        if blk < 0:
            md.pcpu.count("swap_full")
            return VM_PAGER_FAIL
        sb = struct_swblk.new(sb_pindex=m.pindex, sb_block=blk)
        _swp_insert(obj, sb, m.pindex)
        obj.update(type=OBJT_SWAP, swp_bcount=obj.swp_bcount + 1)
    blk = sb.sb_block
    crc = memory.swap_write(m.phys_addr, blk)
    sb.sb_crc = crc
    _transfer_wait(m, "swwrt", "machine.swap_write_latency_us")
    m.dirty = 0
    md.pcpu.count("pages_swapped_out")
    return VM_PAGER_OK


def swap_pager_getpage(obj: KObj, m: KObj) -> int:
    """Read ``m`` (busy, of ``obj``) back from swap and check it."""
    sb = _swp_lookup(obj, m.pindex)
    if sb is None:
        return VM_PAGER_FAIL
    blk, want = sb.load("sb_block", "sb_crc")
    got = memory.swap_read(blk, m.phys_addr)
    _transfer_wait(m, "swread", "machine.swap_latency_us")
    if got != want:
        md.pcpu.count("checksum_errors")
        md.pcpu.note_violation(f"swap: object {obj.handle} page {m.pindex} came back from "
                               f"block {blk} with crc {got:#x}, wrote {want:#x}")
        return VM_PAGER_ERROR
    crc = memory.page_sum(m.phys_addr)
    if crc != want:
        md.pcpu.count("checksum_errors")
        md.pcpu.note_violation(f"swap: page {m.handle} frame differs from its swap copy")
        return VM_PAGER_ERROR
    m.update(valid=VM_PAGE_BITS_ALL, dirty=0)
    md.pcpu.count("pages_swapped_in")
    return VM_PAGER_OK


def swap_pager_copy(src: KObj, dst: KObj, pindex: int) -> bool:
    """Give ``dst`` its own swap copy of ``src``'s page at ``pindex`` (vmspace_fork of a
    page that is only on swap). False if there is none or the device is full."""
    sb = _swp_lookup(src, pindex)
    if sb is None:
        return False
    blk = _swp_alloc()
    if blk < 0:
        return False
    crc = memory.swap_copy(sb.sb_block, blk)
    if crc != sb.sb_crc:
        md.pcpu.count("checksum_errors")
        md.pcpu.note_violation(f"swap: block {sb.sb_block} changed on the device")
    nsb = struct_swblk.new(sb_pindex=pindex, sb_block=blk, sb_crc=crc)
    _swp_insert(dst, nsb, pindex)
    dst.update(type=OBJT_SWAP, swp_bcount=dst.swp_bcount + 1)
    return True


def swap_pager_freespace(obj: KObj) -> None:
    """Release every swap block of ``obj`` (object termination)."""
    while True:
        sb = TAILQ_FIRST(obj.swblist, struct_swblk)
        if sb is None:
            break
        TAILQ_REMOVE(obj.swblist, sb)
        HASH_REMOVE(obj.swhash, sb.sb_pindex)
        _swp_release(sb)
    obj.swp_bcount = 0


def vm_pager_get_pages(obj: KObj, ms: list[KObj], count: int, reqpage: int) -> int:
    """Fill ``ms[reqpage]`` from the object's backing store."""
    m = ms[reqpage]
    t = obj.type
    if t == OBJT_SWAP:
        return swap_pager_getpage(obj, m)
    if t == OBJT_DEFAULT:
        return VM_PAGER_FAIL                # default_pager: nothing was ever paged out
    md.panic(f"vm_pager_get_pages: object type {t}")
    return VM_PAGER_ERROR


def vm_pager_put_page(obj: KObj, m: KObj) -> int:
    t = obj.type
    if t in (OBJT_DEFAULT, OBJT_SWAP):
        return swap_pager_putpage(obj, m)
    return VM_PAGER_FAIL
