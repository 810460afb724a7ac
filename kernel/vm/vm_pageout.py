"""The pageout daemon and the vm daemon, after FreeBSD 5.0 ``vm/vm_pageout.c`` (the part the
port needs).

The **pageout daemon** sleeps on ``vm_pages_needed`` (at most a second) and, whenever free
memory is below its target, scans: it frees clean inactive pages, writes dirty ones to swap
(``vm_pager_put_page``) and frees them, and refills the inactive queue from the active one.
When a scan misses the target with ``vm.swap_enabled`` and memory below target, it asks the
vm daemon for ``VM_SWAP_NORMAL``; with ``vm.swap_idle_enabled`` it asks for
``VM_SWAP_IDLE`` at most once a simulated second. It wakes ``VM_WAIT``'s sleepers once
memory is back above ``v_free_min``.

The **vm daemon** sleeps on ``vm_daemon_needed`` and runs ``swapout_procs`` with the
requested action, holding Giant, then clears the request. Requests are rate-limited to
one per ``hz`` ticks (``vm_req_vmdaemon``).

PORT: the daemons' RSS enforcement and the vnode/cache-queue policy are left out; pages
go straight from inactive to free (with their contents on swap) rather than through the
cache queue.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_kthread import kthread_create_on
from smp.kernel.kern.kern_mutex import mtx_lock
from smp.kernel.kern.kern_synch import tsleep, wakeup
from smp.kernel.kern.kern_thread import curproc
from smp.kernel.machine import cpu as md
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import TAILQ_ITEMS
from smp.kernel.sys.param import EWOULDBLOCK, PPAUSE, PVM
from smp.kernel.vm import vm_page as vp
from smp.kernel.vm.swap_pager import vm_pager_put_page
from smp.kernel.vm.vm import PG_BUSY, VM_PAGER_OK, VM_SWAP_IDLE, VM_SWAP_NORMAL
from smp.kernel.vm.vm_glue import swapout_procs

VM_PAGEOUT_BATCH = 64

vm_swap_enabled = True
vm_swap_idle_enabled = False

# state private to the pageout daemon (the one caller of vm_req_vmdaemon); the request
# word itself, vm_pageout_req_swapout, is shared with the vm daemon (cnt, under Giant)
_lastrun = -10**9
_lsec = -1


def vm_pageout_sysctl(config: dict[str, Any]) -> None:
    global vm_swap_enabled, vm_swap_idle_enabled
    vm_swap_enabled = bool(config["vm.swap_enabled"])
    vm_swap_idle_enabled = bool(config["vm.swap_idle_enabled"])


def vm_req_vmdaemon(req: int) -> None:
    global _lastrun
    cnt = vp.cnt
    cnt.vm_pageout_req_swapout |= req
    ticks = md.pcpu.ticks
    if ticks > _lastrun + param.hz or ticks < _lastrun:
        wakeup(vm_daemon_chan())
        _lastrun = ticks


def vm_daemon_chan() -> int:
    return vp.cnt.addr("v_swapout")         # PORT: &vm_daemon_needed


def vm_pageout_scan(pass_: int) -> None:
    """One scan of the paging queues (Giant held)."""
    global _lsec
    cnt = vp.cnt
    md.pcpu.count("pageout_scans")
    # Idle process swapout -- run once per second.
    if vm_swap_idle_enabled:
        sec = md.pcpu.ticks // param.hz
        if sec != _lsec:
            vm_req_vmdaemon(VM_SWAP_IDLE)
            _lsec = sec
    # PORT: a pass frees at most VM_PAGEOUT_BATCH pages. Each page costs a dozen round
    # trips here, so an unbounded pass would hold Giant and the page queues for seconds;
    # the daemon comes back for more (pass > 1) as FreeBSD's does.
    shortage = min(vp.vm_paging_target(), VM_PAGEOUT_BATCH)
    vp.vm_page_lock_queues()
    if shortage > 0:
        for m in TAILQ_ITEMS(cnt.pq_inactive, vp.struct_vm_page):
            if shortage <= 0:
                break
            flags, busy, hold, wire, dirty, queue = m.load(
                "flags", "busy", "hold_count", "wire_count", "dirty", "queue")
            if queue != vp.PQ_INACTIVE or flags & PG_BUSY or busy or hold or wire:
                continue
            obj = m.object
            if obj is None:
                continue
            vp.vm_page_busy(m)
            if dirty:
                # The write takes time (the page stays busy meanwhile): let go of the
                # queues while it is in flight, as the clustered async pageout did.
                vp.vm_page_unlock_queues()
                rv = vm_pager_put_page(obj, m)
                vp.vm_page_lock_queues()
                if rv != VM_PAGER_OK:
                    vp.vm_page_wakeup(m)
                    vp.vm_page_activate(m)
                    continue
                cnt.v_swappgsout += 1
            md.pcpu.count("pages_freed_by_pageout")
            vp.vm_page_free(m)
            shortage -= 1
    # refill the inactive queue from the active one
    f, c, target, inact, inact_target = cnt.load("v_free_count", "v_cache_count",
                                                 "v_free_target", "v_inactive_count",
                                                 "v_inactive_target")
    want = max(inact_target - inact, shortage, 0)
    if want:
        for m in TAILQ_ITEMS(cnt.pq_active, vp.struct_vm_page):
            if want <= 0:
                break
            flags, busy, hold, wire, queue = m.load("flags", "busy", "hold_count",
                                                    "wire_count", "queue")
            if queue != vp.PQ_ACTIVE or flags & PG_BUSY or busy or hold or wire:
                continue
            vp.vm_page_deactivate(m)
            want -= 1
    vp.vm_page_unlock_queues()
    # kick swapout if we did not get enough free pages
    if vp.vm_paging_target() > 0:
        if vm_swap_enabled and vp.vm_page_count_target():
            vm_req_vmdaemon(VM_SWAP_NORMAL)


def vm_pageout() -> None:
    """The pageout daemon's thread (pageproc)."""
    cnt = vp.cnt
    G = kern_globals.G
    mtx_lock(G.Giant)
    cnt.pageproc = curproc()
    pass_ = 0
    while True:
        #
        # If we have enough free memory, wakeup waiters.  Do
        # not clear vm_pages_needed until we reach our target,
        # otherwise we may be woken up over and over again and
        # waste a lot of cpu.
        #
        if cnt.vm_pages_needed and not vp.vm_page_count_min():
            if vp.vm_paging_target() <= 0:
                cnt.vm_pages_needed = 0
            wakeup(cnt.addr("v_free_count"))
        if cnt.vm_pages_needed:
            #
            # Still not done, take a second pass without waiting
            # (unlimited dirty cleaning), otherwise sleep a bit
            # and try again.
            #
            pass_ += 1
            if pass_ > 1:
                tsleep(cnt.addr("vm_pages_needed"), PVM, "psleep", param.hz // 2)
        else:
            #
            # Good enough, sleep & handle stats.  Prime the pass
            # for the next run.
            #
            pass_ = 1 if pass_ > 1 else 0
            error = tsleep(cnt.addr("vm_pages_needed"), PVM, "psleep", param.hz)
            if error == EWOULDBLOCK and not cnt.vm_pages_needed:
                pass_ = 0
                if not vp.vm_page_count_target() and not vm_swap_idle_enabled:
                    continue
                # PORT: 5.0 only looked at page statistics here; a machine that stays
                # below its target with nobody asking, or that swaps idle processes,
                # still gets a scan (which is where the idle swapout request is made).
        vm_pageout_scan(pass_)


def vm_daemon() -> None:
    """The vm daemon's thread: swapout_procs on request."""
    G = kern_globals.G
    cnt = vp.cnt
    mtx_lock(G.Giant)
    while True:
        tsleep(vm_daemon_chan(), PPAUSE, "psleep", 0)
        req = cnt.vm_pageout_req_swapout
        if req:
            md.pcpu.count("swapout_procs_calls")
            swapout_procs(req)
            cnt.vm_pageout_req_swapout = 0


def vm_pageout_init(_: Any) -> None:
    """Each CPU: start the daemon(s) placed on it (``kern.kthread_placement``)."""
    kthread_create_on("pagedaemon", vm_pageout, PVM)
    kthread_create_on("vmdaemon", vm_daemon, PVM)


SYSINIT("pagedaemon", SI_SUB.SI_SUB_KTHREAD_PAGE, SI_ORDER.SI_ORDER_FIRST, vm_pageout_init,
        percpu=True)
