"""A lock load: kernel threads on every CPU that contend on Giant, sched_lock, allproc_lock
and per-object sleep mutexes, and sleep and wake each other across CPUs.

Each of ``workload.kthreads`` threads per CPU loops, choosing an object at random (from
the run's seed): it takes Giant and works, takes the object's mutex and increments the
object's counter *non-atomically* (a load, some work, a store), sometimes sleeps on the
object with its mutex as the interlock (``msleep``) or wakes the object's sleepers, takes
sched_lock briefly, and sometimes walks allproc under its shared lock.

The counters make mutual exclusion checkable: every increment is also added, atomically, to
``ll_total``; at the end of the run the sum of the objects' counters must equal it, but for
the increments of threads stopped between the two while they held an object's mutex. A lost
update would show as a sum short of the total (the launcher checks it).
"""

from __future__ import annotations

import random
from typing import Any

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_kthread import kthread_create
from smp.kernel.kern.kern_mutex import (MTX_DEF, mtx_init, mtx_lock, mtx_lock_spin, mtx_unlock,
                                        mtx_unlock_spin)
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock, sx_xlock, sx_xunlock
from smp.kernel.kern.kern_synch import msleep, wakeup
from smp.kernel.kern.kern_thread import curlocal
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel import param
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import F, KStruct, TAILQ_FOREACH, TAILQ_INSERT_TAIL
from smp.kernel.sys.param import EWOULDBLOCK, PWAIT
from smp.kernel.sys.proc import struct_proc

struct_lockobj = KStruct("lockobj", [
    F("lo_mtx", "mtx"),
    F("lo_count", "int", "o"),          # (o) the object's own lo_mtx
    F("lo_sleepers", "int", "o"),
    F("lo_index", "int", "b"),
], doc="an object of the lock load")

struct_lockload = KStruct("lockload", [
    F("ll_objs", "list", "b"),          # filled at boot, then read-only
    F("ll_total", "int", ""),           # atomic
    F("ll_nobjs", "int", "b"),
], doc="the lock load's shared state")


def lockload_init(_: Any) -> None:
    """BSP: make the shared objects."""
    cfg = md.pcpu.config
    ll = struct_lockload.new(ll_nobjs=int(cfg["workload.objects"]))
    for i in range(int(cfg["workload.objects"])):
        o = struct_lockobj.new(lo_index=i)
        mtx_init(o.lo_mtx, "lockobj", None, MTX_DEF)
        TAILQ_INSERT_TAIL(ll.ll_objs, o)
    memory.symbol("lockload", ll.handle)
    # checked at the end of the run, over the whole machine: every increment landed (a
    # thread stopped holding an object's mutex may have stored its count and not yet
    # added it to the total: "held")
    md.register("invariants", [{
        "name": "lockload", "what": "a lost update: mutual exclusion failed",
        "sum": ["lockobj", "lo_count"], "total": ["lockload", "ll_total"],
        "held": "lockobj", "counter": "lockload_increments"}])


SYSINIT("lockload", SI_SUB.SI_SUB_KTHREAD_INIT, SI_ORDER.SI_ORDER_FIRST, lockload_init)


def lockload_start(_: Any) -> None:
    """Every CPU: start this CPU's threads."""
    cfg = md.pcpu.config
    n = int(cfg["workload.kthreads"])
    if n == 0:
        return
    ll = struct_lockload.at(memory.lookup("lockload"))
    assert ll is not None
    objs = list(TAILQ_FOREACH(ll.ll_objs, struct_lockobj))
    for i in range(n):
        rng = md.random_source("lockload", md.pcpu.cpuid, i)
        kthread_create(lambda r=rng: lockload_thread(ll, objs, r),
                       f"lockload{md.pcpu.cpuid}.{i}", PWAIT)


SYSINIT("lockload_start", SI_SUB.SI_SUB_KTHREAD_INIT, SI_ORDER.SI_ORDER_SECOND,
        lockload_start, percpu=True)


def lockload_thread(ll: Any, objs: list[Any], rng: random.Random) -> None:
    cfg = md.pcpu.config
    hold = float(cfg["workload.hold_us"])
    think = float(cfg["workload.think_us"])
    sleep_prob = float(cfg["workload.sleep_prob"])
    G = kern_globals.G
    pc = md.pcpu
    lt = curlocal()
    while True:
        o = objs[rng.randrange(len(objs))]
        mtx_lock(G.Giant)
        md.cpu_work(hold / 2)
        mtx_unlock(G.Giant)

        mtx_lock(o.lo_mtx)
        v = o.lo_count
        md.cpu_work(hold)
        o.lo_count = v + 1
        memory.atomic_add(ll.handle, "ll_total", 1)
        pc.count("lockload_increments")
        if rng.random() < sleep_prob:
            o.lo_sleepers += 1
            pc.count("lockload_sleeps")
            if msleep(o.addr("lo_count"), o.lo_mtx, PWAIT, "lkwait", param.hz // 2) \
                    == EWOULDBLOCK:
                pc.count("lockload_timeouts")
            o.lo_sleepers -= 1
        elif o.lo_sleepers > 0:
            pc.count("lockload_wakeups_sent")
            wakeup(o.addr("lo_count"))
        mtx_unlock(o.lo_mtx)

        mtx_lock_spin(G.sched_lock)
        lt.td.td_base_pri = lt.td.td_priority
        mtx_unlock_spin(G.sched_lock)

        r = rng.random()
        if r < 0.1:
            sx_slock(G.allproc_lock)
            n = sum(1 for _ in TAILQ_FOREACH(G.allproc, struct_proc))
            sx_sunlock(G.allproc_lock)
            pc.count("lockload_allproc_walks")
            if n <= 0:
                md.panic("lockload: allproc is empty")
        elif r < 0.12:
            sx_xlock(G.allproc_lock)
            md.cpu_work(hold)
            sx_xunlock(G.allproc_lock)
        md.cpu_work(think)
