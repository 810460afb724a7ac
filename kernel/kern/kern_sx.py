"""Shared/exclusive locks (``allproc_lock``, ``proctree_lock``), after FreeBSD ``kern/kern_sx.c``.

The 2002 sx lock was a mutex and two condition variables: readers wait only while a writer
holds the lock (no writer preference) and a waiting thread *sleeps* on a condition
variable, so it shows ``TDI_SLEEPING``, not ``TDI_LOCK``. May be held across a sleep.

Recursion, as in 5.0: **shared recursion is allowed, silently**. 5.0's ``sx_init`` set
``lo_flags = LO_WITNESS | LO_RECURSABLE | LO_SLEEPABLE | LO_UPGRADABLE`` (and
``lock_class_sx`` is ``LC_RECURSABLE``); ``_sx_slock`` asserted only that the thread was not
the exclusive holder ("slock while xlock is held") and counted ``sx_cnt++``; and
``witness_lock()``, finding the lock on the thread's list already, panicked only on
"share->excl"/"excl->share" or when the lock was not ``LO_RECURSABLE``, so a second shared
hold was counted (``li_flags++``) and nothing was said. (freebsd-src: kern_sx.c of 2001
and of 6.x, either side of 5.0, set those flags alike; subr_witness.c of late 2002, whose
order_lists subr_witness.py follows: the recursion check in ``witness_lock``.) It cannot
deadlock on its own: readers wait only while a writer *holds* the lock, never for a
waiting one. So the lock is initialised without ``LF_NOSHREC`` (lockmgr has it), and a
thread's shared holds are counted (``owned_sx``). Exclusive recursion panics ("xlock
already held": _sx_xlock's KASSERT, and assertions are always on here), as does mixing
shared and exclusive holds.
"""

from __future__ import annotations

from smp.kernel.kern.kern_mutex import curlocal, drop_hold
from smp.kernel.kern.subr_lock import lock_block
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import (EXCL, LK_RW, QUEUED, SHARED, lock_acquire, lock_destroy,
                                     lock_init, lock_release, lock_try)

__site_transparent__ = True     # lock requests made here are their caller's

SX_LOCKED = 0x01
SX_SLOCKED = 0x02
SX_XLOCKED = 0x04
SX_UNLOCKED = 0x08


def sx_init(sx: int, description: str) -> None:
    lock_init(sx, LK_RW, "sx", description, 0)     # LO_RECURSABLE: shared recursion allowed


def sx_destroy(sx: int) -> None:
    lock_destroy(sx)


def _sx_lock(sx: int, mode: int) -> None:
    lt = curlocal()
    where = md.site()
    if lock_acquire(sx, mode, 0, where) == QUEUED:
        lock_block(lt, sx, "sx", mode, where)
    key = (sx, mode)
    lt.owned_sx[key] = lt.owned_sx.get(key, 0) + 1


def _sx_try(sx: int, mode: int) -> bool:
    lt = curlocal()
    if not lock_try(sx, mode):
        return False
    key = (sx, mode)
    lt.owned_sx[key] = lt.owned_sx.get(key, 0) + 1
    return True


def _sx_unlock(sx: int, mode: int) -> None:
    drop_hold(curlocal().owned_sx, (sx, mode),
               f"sx {sx:#x}: unlock of a lock not held "
               f"{'shared' if mode == SHARED else 'exclusive'}")
    lock_release(sx, mode)


def sx_slock(sx: int) -> None:
    _sx_lock(sx, SHARED)


def sx_xlock(sx: int) -> None:
    _sx_lock(sx, EXCL)


def sx_try_slock(sx: int) -> bool:
    return _sx_try(sx, SHARED)


def sx_try_xlock(sx: int) -> bool:
    return _sx_try(sx, EXCL)


def sx_sunlock(sx: int) -> None:
    _sx_unlock(sx, SHARED)


def sx_xunlock(sx: int) -> None:
    _sx_unlock(sx, EXCL)


def sx_assert(sx: int, what: int) -> None:
    lt = curlocal()
    shared = lt.owned_sx.get((sx, SHARED), 0)
    excl = lt.owned_sx.get((sx, EXCL), 0)
    if what & SX_XLOCKED and not excl:
        md.panic(f"sx {sx:#x} not exclusively locked at {md.site()}")
    if what & SX_SLOCKED and not shared:
        md.panic(f"sx {sx:#x} not share locked at {md.site()}")
    if what & SX_LOCKED and not (shared or excl):
        md.panic(f"sx {sx:#x} not locked at {md.site()}")
    if what & SX_UNLOCKED and (shared or excl):
        md.panic(f"sx {sx:#x} locked at {md.site()}")


__all__ = ["sx_init", "sx_destroy", "sx_slock", "sx_xlock", "sx_try_slock", "sx_try_xlock",
           "sx_sunlock", "sx_xunlock", "sx_assert", "SX_LOCKED", "SX_SLOCKED",
           "SX_XLOCKED", "SX_UNLOCKED"]
