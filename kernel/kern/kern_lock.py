"""lockmgr(9) locks, after FreeBSD ``kern/kern_lock.c``: what ``vm_map`` locks are built on.

Only the requests the vm code of 2002 makes: ``LK_SHARED``, ``LK_EXCLUSIVE``, ``LK_RELEASE``,
each optionally with ``LK_NOWAIT`` (the try-lock that ``vm_map_trylock`` is). A waiting
thread sleeps (``TDI_SLEEPING``), as lockmgr's ``msleep`` did. WITNESS did not track lockmgr
locks in 2002; the server still refuses recursion and an unlock by a non-holder.
"""

from __future__ import annotations

from smp.kernel.kern.kern_mutex import curlocal, drop_hold
from smp.kernel.kern.subr_lock import lock_block
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import (BUSY, EXCL, LF_NOSHREC, LF_NOWITNESS, LK_RW, QUEUED, SHARED,
                                     AF_TRY, lock_acquire, lock_destroy, lock_init, lock_release)

__site_transparent__ = True     # lock requests made here are their caller's

LK_SHARED = 0x00000001
LK_EXCLUSIVE = 0x00000002
LK_RELEASE = 0x00000006
LK_TYPE_MASK = 0x0000000F
LK_NOWAIT = 0x00000010
LK_CANRECURSE = 0x00000040

EBUSY = 16


def lockinit(lkp: int, prio: int, wmesg: str, timo: int, flags: int) -> None:
    # WITNESS did not check lockmgr locks in 2002; lockmgr refuses shared recursion
    lock_init(lkp, LK_RW, "lockmgr", wmesg, LF_NOWITNESS | LF_NOSHREC)


def lockdestroy(lkp: int) -> None:
    lock_destroy(lkp)


def lockmgr(lkp: int, flags: int) -> int:
    """0 on success, EBUSY when LK_NOWAIT could not get the lock."""
    lt = curlocal()
    op = flags & LK_TYPE_MASK
    if op == LK_RELEASE:
        mode = EXCL if lt.owned_sx.get((lkp, EXCL)) else SHARED
        drop_hold(lt.owned_sx, (lkp, mode),
                  f"lockmgr: thread {lt.name} unlocking unheld lock {lkp:#x}")
        lock_release(lkp, mode)
        return 0
    mode = SHARED if op == LK_SHARED else EXCL
    where = md.site()
    st = lock_acquire(lkp, mode, AF_TRY if flags & LK_NOWAIT else 0, where)
    if st == QUEUED:
        lock_block(lt, lkp, "lockmgr", mode, where)
    elif st == BUSY:
        return EBUSY
    key = (lkp, mode)
    lt.owned_sx[key] = lt.owned_sx.get(key, 0) + 1
    return 0


def lockstatus_excl(lkp: int) -> bool:
    return bool(curlocal().owned_sx.get((lkp, EXCL)))
