"""Mutexes: spin (``sched_lock``) and sleep (Giant, proc locks), after FreeBSD ``kern/kern_mutex.c``.

Ownership is decided by the server's lock table; this module is what a *thread* does
around that: a spin mutex enters a critical section (interrupts masked) and spins until
the server grants it; a contended sleep mutex blocks the thread (``TDI_LOCK``) and lets the
CPU run something else until the server's ``GRANT`` event comes back.

Each thread also keeps, locally, which locks it holds and how deep (``LocalThread.owned``).
Only the owner changes that, so the record is exact, and ``mtx_owned``/``mtx_assert`` read
it without a round trip, as ``m->mtx_lock == curthread`` reads the lock word.

PORT: FreeBSD 5.0 blocked on a contended mutex with priority propagation; the server
grants in FIFO order and there is no propagation. The granted thread clears its own
``TDI_LOCK`` when it runs again (the C releaser did it for the waiter under sched_lock);
until then other CPUs see it as blocked on the lock, which every reader of those fields
treats the same as "on a run queue": not safe to swap out.
"""

from __future__ import annotations

from hw.protocol import EXCL, LC_SLEEP, LC_SPIN, LF_DUPOK, LF_NOWITNESS, LF_RECURSE, Op, QUEUED
from kernel.kern.kern_chaos import chaos_yield
from kernel.machine import cpu as md

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
    md.bus_post(Op.LOCK_INIT, m, LC_SPIN if opts & MTX_SPIN else LC_SLEEP, name,
                _flags(opts))


def mtx_destroy(m: int) -> None:
    md.bus_post(Op.LOCK_DESTROY, m)


def _curlocal():  # type: ignore[no-untyped-def]
    return md.curctx().kdata


def mtx_lock(m: int, _flags: int = 0) -> None:
    """Acquire sleep mutex ``m``; may block (never call with a spin mutex held)."""
    hw = md.pcpu.hw
    lt = _curlocal()
    hw.counters.lock_acquires += 1
    site = md.site()
    if hw.call(Op.ACQUIRE, site, m, EXCL, _flags) == QUEUED:
        hw.counters.lock_contested += 1
        _lock_block(lt, m, "mutex", EXCL, site)
    lt.owned[m] = lt.owned.get(m, 0) + 1
    if hw.chaos is not None:
        chaos_yield()


def mtx_trylock(m: int) -> bool:
    hw = md.pcpu.hw
    lt = _curlocal()
    hw.counters.lock_acquires += 1
    if hw.call(Op.ACQUIRE, md.site(), m, EXCL, 1) != 0:
        return False
    lt.owned[m] = lt.owned.get(m, 0) + 1
    return True


def mtx_unlock(m: int) -> None:
    lt = _curlocal()
    _disown(lt, m)
    hw = md.pcpu.hw
    hw.post(Op.RELEASE, md.site(), m, EXCL)
    if hw.chaos is not None:
        chaos_yield()


def mtx_lock_spin(m: int) -> None:
    """Acquire spin mutex ``m``: enter a critical section, then spin until granted."""
    hw = md.pcpu.hw
    lt = _curlocal()
    hw.critical_enter()
    hw.counters.lock_acquires += 1
    if hw.call(Op.ACQUIRE, md.site(), m, EXCL, 0) == QUEUED:
        hw.counters.lock_contested += 1
        hw.spin_wait(lt.tid, m)
    lt.owned[m] = lt.owned.get(m, 0) + 1


def mtx_unlock_spin(m: int) -> None:
    hw = md.pcpu.hw
    lt = _curlocal()
    _disown(lt, m)
    hw.post(Op.RELEASE, md.site(), m, EXCL)
    hw.critical_exit()


def _drop_hold(holds: dict, key: object, complaint: str) -> None:  # type: ignore[type-arg]
    """One hold fewer in a thread's record of its locks; none to drop panics."""
    n = holds.get(key, 0)
    if n == 0:
        md.panic(complaint)
    if n == 1:
        del holds[key]
    else:
        holds[key] = n - 1


def _disown(lt, m: int) -> None:  # type: ignore[no-untyped-def]
    _drop_hold(lt.owned, m, f"unlock of lock {m:#x} not owned by thread {lt.name}")


def mtx_owned(m: int) -> bool:
    return _curlocal().owned.get(m, 0) > 0


def mtx_recursed(m: int) -> bool:
    return _curlocal().owned.get(m, 0) > 1


def mtx_assert(m: int, what: int, name: str = "") -> None:
    """Panic unless the current thread's hold on ``m`` is as ``what`` says (INVARIANTS)."""
    n = _curlocal().owned.get(m, 0)
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


# -- blocking: what a thread does while the server queues it on a lock ----------------------
def _lock_block(lt, lock: int, kind: str, mode: int, site: str) -> None:  # type: ignore[no-untyped-def]
    """The server queued the current thread on ``lock``: sleep until it wakes us, try
    again, until the lock is ours (5.0's ``_mtx_lock_sleep`` loop on a contested mutex;
    the condition-variable waits of sx and lockmgr).

    A thread blocked on a mutex keeps Giant, as on a turnstile. One that waits for an sx or
    lockmgr lock *sleeps* (cv_wait, msleep), so it drops Giant while it waits and takes it
    back before it tries again, as those sleeps do.
    """
    from kernel.kern import kern_synch
    from kernel.kern.kern_globals import G
    hw = md.pcpu.hw
    t0 = hw.clock.now()
    giant = 0
    if kind != "mutex" and lock != G.Giant:
        giant = kern_synch.DROP_GIANT(lt)
    try:
        while True:
            _wait_wakeup(lt, lock, kind)
            kern_synch.PICKUP_GIANT(giant)
            if hw.call(Op.ACQUIRE, site, lock, mode, 0) != QUEUED:
                return
            giant = kern_synch.DROP_GIANT(lt) if giant else 0
    finally:
        hw.counters.sleep_wait_s += hw.clock.now() - t0    # per-CPU sleep-lock wait time


def _wait_wakeup(lt, lock: int, kind: str) -> None:  # type: ignore[no-untyped-def]
    from kernel.kern import kern_synch
    from kernel.kern.kern_globals import G
    from kernel.sys.proc import TDI, TDS, TD_SET_INHIB

    sched_lock = G.sched_lock
    mtx_lock_spin(sched_lock)
    td = lt.td
    inhibitor = TDI.TDI_LOCK if kind == "mutex" else TDI.TDI_SLEEPING
    td.update(td_blocked=lock, td_lockname=kind)
    TD_SET_INHIB(td, inhibitor)
    lt.blocked_on = lock
    lt.blocked_sleeps = kind != "mutex"
    if lock not in lt.granted:
        kern_synch.mi_switch(voluntary=True)
    lt.granted.discard(lock)
    lt.blocked_on = 0
    inhib = td.td_inhibitors & ~int(inhibitor)
    td.update(td_blocked=0, td_inhibitors=inhib,
              td_state=int(TDS.TDS_RUNNING) if inhib == 0 else int(TDS.TDS_INHIBITED))
    mtx_unlock_spin(sched_lock)


def lock_granted(tid: int, lock: int) -> None:
    """The WAKE (and GRANT) interrupt: local thread ``tid`` may have ``lock`` now."""
    from kernel.kern import kern_switch
    lt = md.pcpu.threads.get(tid)
    if lt is None:
        md.panic(f"lock {lock:#x} granted to thread {tid}, which is not on cpu "
                 f"{md.pcpu.cpuid}")
    lt.granted.add(lock)
    if lt.blocked_on != lock:
        return
    if not lt.blocked_sleeps:
        kern_switch.runq_add(lt)            # the turnstile: the releaser's setrunqueue
        return
    # An sx or lockmgr waiter sleeps (cv_wait, msleep) and is woken as wakeup() wakes, by
    # setrunnable: a sleeping thread is safe to swap out, and if its process was swapped
    # out meanwhile, the swapper is asked to bring it in (it must not run on a kernel
    # stack that is not there).
    from kernel.kern.kern_globals import G
    from kernel.kern.kern_synch import setrunnable
    from kernel.sys.proc import TD_CLR_SLEEPING
    mtx_lock_spin(G.sched_lock)
    TD_CLR_SLEEPING(lt.td)
    setrunnable(lt.td)
    mtx_unlock_spin(G.sched_lock)


def GIANT_REQUIRED() -> None:
    """``mtx_assert(&Giant, MA_OWNED)``."""
    from kernel.kern.kern_globals import G
    mtx_assert(G.Giant, MA_OWNED, "Giant")
