"""Lock words and sleep queues, as the kernel reaches them.

Who owns a lock is the machine's business (the server's lock table, DESIGN.md decision 3);
what a *thread* does around it (spin with interrupts masked, or block and let the CPU run
something else) is the kernel's (``kern/kern_mutex.py``, ``kern_sx.py``, ``kern_lock.py``).
This module is the request in between, with the machine's lock kinds:

* ``LK_SPIN``: spins, handed to the first spinner on release (``sched_lock``);
* ``LK_SLEEP``: exclusive, a release wakes the first waiter to try again (a sleep mutex);
* ``LK_RW``: shared or exclusive with sleeping waiters (sx locks, lockmgr locks).

Each lock also carries the kernel's name for its class (``"sleep mutex"``), which the
machine only prints, and flags: ``LF_RECURSE``, ``LF_DUPOK``, ``LF_NOWITNESS`` (not
order-checked), ``LF_NOSHREC`` (no shared recursion: lockmgr).

An acquire answers ``GRANTED``, ``QUEUED`` (a grant or wake-up interrupt follows: the
kernel's ``on_grant`` vector) or ``BUSY`` (a try-lock that failed).
"""

from __future__ import annotations

from typing import Any

from smp.hw.protocol import (AF_PICKUP, AF_TRY, BUSY, EXCL, GRANTED, LF_DUPOK, LF_NOSHREC,
                             LF_NOWITNESS, LF_RECURSE, LK_RW, LK_SLEEP, LK_SPIN, QUEUED, SHARED,
                             Op)
from smp.kernel.machine.cpu import pcpu_hw, site

__site_transparent__ = True    # the door: its requests are their caller's

__all__ = ["AF_PICKUP", "AF_TRY", "BUSY", "EXCL", "GRANTED", "LF_DUPOK", "LF_NOSHREC",
           "LF_NOWITNESS", "LF_RECURSE", "LK_RW", "LK_SLEEP", "LK_SPIN", "QUEUED", "SHARED",
           "lock_init", "lock_destroy", "lock_acquire", "lock_try", "lock_release",
           "lock_release_checked",
           "lock_handoff", "sleepq_add", "sleepq_wakeup", "sleepq_remove"]


def lock_init(addr: int, kind: str, cls: str, name: str, flags: int) -> None:
    """Initialise the lock word at ``addr`` (an embedded lock field)."""
    pcpu_hw().post(Op.LOCK_INIT, site(), addr, kind, cls, name, flags)


def lock_destroy(addr: int) -> None:
    pcpu_hw().post(Op.LOCK_DESTROY, site(), addr)


def lock_acquire(addr: int, mode: int, flags: int = 0, where: str | None = None) -> int:
    """Ask for the lock: GRANTED, or QUEUED (the grant comes as an interrupt). Counted on
    this CPU (acquisitions, and contested ones: queued, or granted when the release that
    left it free came, later in simulated time than this CPU asked)."""
    hw = pcpu_hw()
    hw.counters.lock_acquires += 1
    r: int = hw.call(Op.ACQUIRE, where or site(), addr, mode, flags)
    if r == QUEUED or hw.waited_ns:
        hw.counters.lock_contested += 1
    return r


def lock_retry(addr: int, mode: int, where: str) -> int:
    """Ask again after a wake-up (not counted as a new acquisition)."""
    return pcpu_hw().call(Op.ACQUIRE, where, addr, mode, 0)  # type: ignore[no-any-return]


def lock_try(addr: int, mode: int) -> bool:
    hw = pcpu_hw()
    hw.counters.lock_acquires += 1
    return hw.call(Op.ACQUIRE, site(), addr, mode, AF_TRY) == GRANTED  # type: ignore[no-any-return]


def lock_release(addr: int, mode: int) -> None:
    pcpu_hw().post(Op.RELEASE, site(), addr, mode)


def lock_release_checked(addr: int, mode: int) -> str:
    """A release the machine answers (not posted): "" if it let the lock go, else its
    words for the refusal (the lock's class and name, the site, who owns it, where it was
    last released). Only for a release the kernel's own record already says is wrong: the
    panic that follows names the lock as WITNESS's "lock (sleep mutex) ... not locked" did,
    not by its address."""
    ok, why = pcpu_hw().probe(Op.RELEASE, site(), addr, mode)
    return "" if ok else str(why)


def lock_handoff(addr: int, to_tid: int) -> None:
    """cpu_switch passes the held spin lock ``addr`` to the thread that runs next."""
    pcpu_hw().post(Op.HANDOFF, site(), addr, to_tid)


def sleepq_add(chan: Any, interlock: int, timo: int = 0, caller: str = "") -> None:
    """Queue the running thread on ``chan`` and release ``interlock`` (0: none), in one
    step; the sched lock must be held. For the liveness detector's reports: ``timo``, the
    sleep's timeout in ticks (0: none), and ``caller``, the site that went to sleep."""
    pcpu_hw().post(Op.SLEEP, site(), chan, interlock, timo, caller)


def sleepq_wakeup(chan: Any, one: bool, caller: str = "") -> list[int]:
    """Take every sleeper (or the first) off ``chan``; returns their thread ids. For the
    reports: ``caller``, the site that called wakeup."""
    return pcpu_hw().call(Op.WAKEUP, site(), chan, one, caller)  # type: ignore[no-any-return]


def sleepq_remove(chan: Any, tid: int) -> bool:
    """Take ``tid`` off ``chan`` (a timed-out sleep); False if a wakeup got there first."""
    return pcpu_hw().call(Op.UNSLEEP, site(), chan, tid)  # type: ignore[no-any-return]
