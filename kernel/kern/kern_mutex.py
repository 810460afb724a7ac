"""Mutexes: spin (``sched_lock``) and sleep (Giant, proc locks), after FreeBSD ``kern/kern_mutex.c``.

Ownership is decided by the machine's lock table; this module is what a *thread* does
around that: a spin mutex enters a critical section (interrupts masked) and spins until
the machine grants it; a contended sleep mutex blocks the thread (``TDI_LOCK``) and lets
the CPU run something else until the grant comes back (``kern/subr_lock.py``).

Each thread also keeps, locally, which locks it holds and how deep (``LocalThread.owned``).
Only the owner changes that, so the record is exact, and ``mtx_owned``/``mtx_assert`` read
it without a round trip, as ``m->mtx_lock == curthread`` reads the lock word.

PORT: FreeBSD 5.0 blocked on a contended mutex with priority propagation; the machine
grants in FIFO order and there is no propagation. The granted thread clears its own
``TDI_LOCK`` when it runs again (the C releaser did it for the waiter under sched_lock);
until then other CPUs see it as blocked on the lock, which every reader of those fields
treats the same as "on a run queue": not safe to swap out.
"""

from __future__ import annotations

from smp.kernel.kern import kern_globals
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import (EXCL, LF_DUPOK, LF_NOWITNESS, LF_RECURSE, LK_SLEEP, LK_SPIN,
                                     QUEUED, lock_acquire, lock_destroy, lock_init, lock_release,
                                     lock_release_checked, lock_try)

# lock requests made here are their caller's (as __FILE__/__LINE__ in the C macros)
__site_transparent__ = True

# mtx_init() options (sys/mutex.h)
MTX_DEF = 0x00000000
MTX_SPIN = 0x00000001
MTX_RECURSE = 0x00000004
MTX_NOWITNESS = 0x00000008
MTX_QUIET = 0x00000040
MTX_DUPOK = 0x00000020

# mtx_assert() what (sys/mutex.h)
MA_OWNED = 0x01
MA_NOTOWNED = 0x02
MA_RECURSED = 0x04
MA_NOTRECURSED = 0x08


def _flags(opts: int) -> int:
    f = 0
    if opts & MTX_RECURSE:
        f |= LF_RECURSE
    if opts & MTX_DUPOK:
        f |= LF_DUPOK
    if opts & MTX_NOWITNESS:
        f |= LF_NOWITNESS
    return f


def mtx_init(m: int, name: str, type_: str | None, opts: int) -> None:
    """Initialise the mutex at address ``m`` (an embedded ``struct mtx``)."""
    if opts & MTX_SPIN:
        lock_init(m, LK_SPIN, "spin mutex", name, _flags(opts))
    else:
        lock_init(m, LK_SLEEP, "sleep mutex", name, _flags(opts))


def mtx_destroy(m: int) -> None:
    lock_destroy(m)


def curlocal():  # type: ignore[no-untyped-def]
    """The running thread's local record (``kern_thread.LocalThread``)."""
    return md.curctx().kdata


def mtx_lock(m: int, _flags: int = 0, where: str | None = None) -> None:
    """Acquire sleep mutex ``m``; may block (never call with a spin mutex held).
    ``where``: the site to record, if not the caller's (``_mtx_lock_flags``' file and line:
    PICKUP_GIANT names the sleep it takes Giant back for)."""
    lt = curlocal()
    where = where or md.site()
    if lock_acquire(m, EXCL, _flags, where) == QUEUED:
        # cycle: blocking needs the scheduler (kern_synch), which needs mutexes
        from smp.kernel.kern.subr_lock import lock_block
        lock_block(lt, m, "mutex", EXCL, where)
    lt.owned[m] = lt.owned.get(m, 0) + 1
    if md.chaos_on():
        from smp.kernel.kern.kern_chaos import chaos_yield   # cycle: a yield is a switch
        chaos_yield()


def mtx_trylock(m: int) -> bool:
    lt = curlocal()
    if not lock_try(m, EXCL):
        return False
    lt.owned[m] = lt.owned.get(m, 0) + 1
    return True


def _unlock_not_owned(lt, m: int, fn: str) -> None:  # type: ignore[no-untyped-def]
    """This thread unlocks ``m``, which its record says it does not hold: panic, naming the
    lock, as WITNESS's "lock (sleep mutex) process lock not locked @ file:line" did. The
    machine is asked (the release, answered): it knows the lock's name, who owns it and
    where it was last released (a second unlock names the first)."""
    why = lock_release_checked(m, EXCL)
    md.panic(f"{fn}: {why}" if why else
             f"{fn}: unlock of lock {m:#x} not owned by thread {lt.name} (the machine "
             f"let it go: its record and the thread's differ)")


def mtx_unlock(m: int) -> None:
    lt = curlocal()
    if not lt.owned.get(m):
        _unlock_not_owned(lt, m, "mtx_unlock")
    drop_hold(lt.owned, m, f"unlock of lock {m:#x} not owned by thread {lt.name}")
    lock_release(m, EXCL)
    if md.chaos_on():
        from smp.kernel.kern.kern_chaos import chaos_yield   # cycle: a yield is a switch
        chaos_yield()


def mtx_lock_spin(m: int) -> None:
    """Acquire spin mutex ``m``: enter a critical section, then spin until granted."""
    lt = curlocal()
    md.critical_enter()
    if lock_acquire(m, EXCL) == QUEUED:
        md.spin_wait(lt.tid, m)
    lt.owned[m] = lt.owned.get(m, 0) + 1


def mtx_unlock_spin(m: int) -> None:
    lt = curlocal()
    if not lt.owned.get(m):
        _unlock_not_owned(lt, m, "mtx_unlock_spin")
    drop_hold(lt.owned, m, f"unlock of lock {m:#x} not owned by thread {lt.name}")
    lock_release(m, EXCL)
    md.critical_exit()


def drop_hold(holds: dict, key: object, complaint: str) -> None:  # type: ignore[type-arg]
    """One hold fewer in a thread's record of its locks; none to drop panics."""
    n = holds.get(key, 0)
    if n == 0:
        md.panic(complaint)
    if n == 1:
        del holds[key]
    else:
        holds[key] = n - 1


def mtx_owned(m: int) -> bool:
    return curlocal().owned.get(m, 0) > 0


def mtx_recursed(m: int) -> bool:
    return curlocal().owned.get(m, 0) > 1


def mtx_assert(m: int, what: int, name: str = "") -> None:
    """Panic unless the current thread's hold on ``m`` is as ``what`` says (INVARIANTS)."""
    n = curlocal().owned.get(m, 0)
    label = name or f"mutex {m:#x}"
    if what & MA_OWNED:
        if n == 0:
            md.panic(f"mutex {label} not owned at {md.site()}")
        if what & MA_RECURSED and n < 2:
            md.panic(f"mutex {label} not recursed at {md.site()}")
        if what & MA_NOTRECURSED and n > 1:
            md.panic(f"mutex {label} recursed at {md.site()}")
    elif what & MA_NOTOWNED and n:
        md.panic(f"mutex {label} owned at {md.site()}")


def KASSERT(cond: object, msg: str) -> None:
    """Always on (DESIGN.md decision 9): a false ``cond`` panics with ``msg``."""
    if not cond:
        md.panic(msg)


def GIANT_REQUIRED() -> None:
    """``mtx_assert(&Giant, MA_OWNED)``."""
    mtx_assert(kern_globals.G.Giant, MA_OWNED, "Giant")
