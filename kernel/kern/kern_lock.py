"""lockmgr(9) locks, after FreeBSD ``kern/kern_lock.c``: what ``vm_map`` locks are built on.

Only the requests the vm code of 2002 makes: ``LK_SHARED``, ``LK_EXCLUSIVE``, ``LK_RELEASE``,
each optionally with ``LK_NOWAIT`` (the try-lock that ``vm_map_trylock`` is). A waiting
thread sleeps (``TDI_SLEEPING``), as lockmgr's ``msleep`` did. WITNESS did not track lockmgr
locks in 2002; the server still refuses recursion and an unlock by a non-holder.
"""

from __future__ import annotations

from hw.protocol import EXCL, LC_LOCKMGR, SHARED, Op, QUEUED
from kernel.kern.kern_mutex import _curlocal, _drop_hold, _lock_block
from kernel.machine import cpu as md

LK_SHARED = 0x00000001
LK_EXCLUSIVE = 0x00000002
LK_RELEASE = 0x00000006
LK_TYPE_MASK = 0x0000000F
LK_NOWAIT = 0x00000010
LK_CANRECURSE = 0x00000040

EBUSY = 16


def lockinit(lkp: int, prio: int, wmesg: str, timo: int, flags: int) -> None:
    md.bus_post(Op.LOCK_INIT, lkp, LC_LOCKMGR, wmesg, 0)


def lockdestroy(lkp: int) -> None:
    md.bus_post(Op.LOCK_DESTROY, lkp)


def lockmgr(lkp: int, flags: int) -> int:
    """0 on success, EBUSY when LK_NOWAIT could not get the lock."""
    hw = md.pcpu.hw
    lt = _curlocal()
    op = flags & LK_TYPE_MASK
    if op == LK_RELEASE:
        mode = EXCL if lt.owned_sx.get((lkp, EXCL)) else SHARED
        _drop_hold(lt.owned_sx, (lkp, mode),
                   f"lockmgr: thread {lt.name} unlocking unheld lock {lkp:#x}")
        hw.post(Op.RELEASE, md.site(), lkp, mode)
        return 0
    mode = SHARED if op == LK_SHARED else EXCL
    hw.counters.lock_acquires += 1
    site = md.site()
    st = hw.call(Op.ACQUIRE, site, lkp, mode, 1 if flags & LK_NOWAIT else 0)
    if st == QUEUED:
        hw.counters.lock_contested += 1
        _lock_block(lt, lkp, "lockmgr", mode, site)
    elif st != 0:
        return EBUSY
    key = (lkp, mode)
    lt.owned_sx[key] = lt.owned_sx.get(key, 0) + 1
    return 0


def lockstatus_excl(lkp: int) -> bool:
    return bool(_curlocal().owned_sx.get((lkp, EXCL)))
