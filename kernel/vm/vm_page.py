"""Physical pages: allocation, the paging queues, wiring, busying, after FreeBSD 5.0
``vm/vm_page.c``, ``vm/vm_pageq.c`` and the ``vm_wait`` of ``vm/vm_pageout.c``.

Every physical frame has one ``struct vm_page`` record in server memory, made at boot
(``vm_page_startup``). A page is on exactly one of the free, inactive, active and cache
queues, or on none while it is wired (``PQ_NONE``). The counters of ``struct vmmeter``
(FreeBSD's ``cnt``) count each queue and the wired pages, so at any moment when the locks
are held::

    v_free_count + v_wire_count + v_active_count + v_inactive_count + v_cache_count
        + (pages in transit: allocated, busy, on no queue yet) == v_page_count

The end-of-run check holds every lock and counts the queues themselves.

Locks: the page queues (inactive, active, cache) and ``wire_count`` are protected by the
"vm page queue mutex" (``vm_page_lock_queues``, key ``q``); the free queue and
``v_free_count`` by the "vm page queue free mutex" (a spin mutex, a leaf, key ``f``);
``flags``/``busy``/``valid``/``dirty`` by Giant (key ``m``), as in 2002.

The free-page thresholds follow ``vm_pageout_free_page_calc`` (see FREEBSD.md):
reserved < severe < min < target.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern.kern_mutex import (KASSERT, MA_OWNED, MTX_DEF, MTX_SPIN, mtx_assert,
                                        mtx_init, mtx_lock, mtx_lock_spin, mtx_unlock,
                                        mtx_unlock_spin)
from smp.kernel.kern.kern_synch import tsleep, wakeup
from smp.kernel.kern.kern_thread import curproc
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import (F, HASH_INSERT, HASH_LOOKUP, HASH_REMOVE, KObj, KStruct,
                                    TAILQ_FIRST, TAILQ_INSERT_TAIL, TAILQ_REMOVE)
from smp.kernel.sys.param import PSWP, PVM
from smp.kernel.vm.vm import (PG_BUSY, PG_WANTED, PG_ZERO, PQ_ACTIVE, PQ_CACHE, PQ_FREE,
                              PQ_INACTIVE, PQ_NONE, VM_ALLOC_CLASS_MASK, VM_ALLOC_INTERRUPT,
                              VM_ALLOC_NORMAL, VM_ALLOC_RETRY, VM_ALLOC_WIRED, VM_ALLOC_ZERO,
                              VM_PAGE_BITS_ALL)

struct_vm_page = KStruct("vm_page", [
    F("object", "ptr:vm_object", "m"),
    F("pindex", "int", "m"),
    F("phys_addr", "int", "", const=True),  # the frame number (never changes)
    F("queue", "int", "q", PQ_NONE),
    F("flags", "int", "m"),
    F("wire_count", "int", "q"),
    F("hold_count", "int", "q"),
    F("busy", "int", "m"),
    F("valid", "int", "m"),
    F("dirty", "int", "m"),
    F("act_count", "int", "q"),
], doc="a physical page (vm/vm_page.h)")

# The statistics are read without locks everywhere in FreeBSD (vm_page_count_min() is an
# unlocked inline) and changed under the queue locks: keys (F) and (Q), checked at the
# stores only. The queues themselves are (q) and (f).
struct_vmmeter = KStruct("vmmeter", [
    F("v_page_count", "int", ""),
    F("v_free_count", "int", "F"),
    F("v_wire_count", "int", ""),           # atomic
    F("v_active_count", "int", "Q"),
    F("v_inactive_count", "int", "Q"),
    F("v_cache_count", "int", "Q"),
    F("v_free_reserved", "int", ""),
    F("v_free_min", "int", ""),
    F("v_free_target", "int", ""),
    F("v_free_severe", "int", ""),
    F("v_inactive_target", "int", ""),
    F("v_interrupt_free_min", "int", ""),
    F("v_pageout_free_min", "int", ""),
    F("v_swapin", "int", ""),
    F("v_swapout", "int", ""),
    F("v_swappgsin", "int", ""),
    F("v_swappgsout", "int", ""),
    # the globals of vm_page.c / vm_pageout.c that sleepers use as channels
    F("vm_pages_needed", "int", "m"),
    F("vm_pageout_pages_needed", "int", "m"),
    F("vm_pageout_req_swapout", "int", "m"),  # what the pageout daemon asks of the vm daemon
    F("vm_page_queue_mtx", "mtx"),
    F("vm_page_queue_free_mtx", "mtx"),
    F("pq_free", "list", "f"),
    F("pq_inactive", "list", "q"),
    F("pq_active", "list", "q"),
    F("pq_cache", "list", "q"),
    F("pageproc", "ptr:proc", ""),
], doc="struct vmmeter cnt, and the page queues (PORT: one record)")

# PORT: FreeBSD's ``cnt`` and ``vm_page_queues[]`` are separate globals; here one record,
# published to every CPU under the symbol "cnt".
cnt: KObj = None  # type: ignore[assignment]

_QUEUE = {PQ_FREE: ("pq_free", "v_free_count"), PQ_INACTIVE: ("pq_inactive", "v_inactive_count"),
          PQ_ACTIVE: ("pq_active", "v_active_count"), PQ_CACHE: ("pq_cache", "v_cache_count")}


def vm_attach() -> None:
    """Every CPU: find ``cnt`` (the BSP made it in vm_page_startup)."""
    global cnt
    if cnt is None:
        cnt = struct_vmmeter.at(memory.lookup("cnt"))


# -- boot --------------------------------------------------------------------------------
def vm_page_startup(_: Any) -> None:
    """BSP: a vm_page for every frame, all free; then the pageout thresholds.

    The C loops over the frames: ``m->phys_addr = pa; vm_pageq_enqueue(PQ_FREE, m)``.
    PORT: here one NEWN request does that loop in the server: it creates the pages with
    ``queue`` PQ_FREE, sets each one's ``phys_addr`` to its frame (its index) and appends
    each to ``pq_free`` in frame order. One request per page (two, with the enqueue) kept
    the BSP booting for tens of seconds on a 1 GiB machine (262144 pages). Nothing else
    runs yet, so doing it in one step changes no interleaving."""
    global cnt
    npages = param.physmem_pages
    c = struct_vmmeter.new(v_page_count=npages)
    cnt = c
    memory.symbol("cnt", c.handle)
    mtx_init(c.vm_page_queue_mtx, "vm page queue mutex", None, MTX_DEF)
    mtx_init(c.vm_page_queue_free_mtx, "vm page queue free mutex", None, MTX_SPIN)
    memory.obj_newn("vm_page", npages, {"queue": PQ_FREE}, "phys_addr", c.pq_free)
    c.v_free_count = npages
    vm_pageout_free_page_calc(npages)


def vm_pageout_free_page_calc(count: int) -> None:
    """The free-page thresholds (vm_pageout.c), with the i386 constants of the time."""
    vm_pageout_page_count = 8                   # VM_PAGEOUT_PAGE_COUNT
    interrupt_free_min = 2
    pageout_free_min = (2 * 65536) // param.PAGE_SIZE + interrupt_free_min   # 2*MAXBSIZE
    free_min = 4 + (count - 1024) // 200 if count > 1024 else 4
    reserved = vm_pageout_page_count + pageout_free_min + count // 768 + 1   # PQ_L2_SIZE 1
    severe = free_min // 2 + reserved
    free_min += reserved
    target = (4 * free_min + reserved) if count > 6144 else (2 * free_min + reserved)
    cnt.update(v_interrupt_free_min=interrupt_free_min, v_pageout_free_min=pageout_free_min,
               v_free_reserved=reserved, v_free_severe=severe, v_free_min=free_min,
               v_free_target=target, v_inactive_target=target * 3 // 2)


SYSINIT("vm_mem", SI_SUB.SI_SUB_VM, SI_ORDER.SI_ORDER_FIRST, vm_page_startup)

# vm_wait's sleeps, for the liveness detector (kern_proc.py's LIVENESS_WAITS says how):
# memory back above v_free_min (not vm_page_count_min()), which vm_page_free_wakeup and
# the pagedaemon tell by clearing the flag they check, then waking the sleepers
VM_WAITS: dict[str, dict[str, Any]] = {
    "vmwait": {"chan": "v_free_count", "sum": ["v_free_count", "v_cache_count"],
               "at_least": "v_free_min", "name": ["vm_pages_needed"],
               "what": "free pages above v_free_min"},
    "VMWait": {"chan": "vm_pageout_pages_needed", "sum": ["v_free_count", "v_cache_count"],
               "at_least": "v_free_min", "name": ["vm_pageout_pages_needed"],
               "what": "free pages above v_free_min"},
    # vm_daemon (vm_pageout.c) sleeps for work, with no timeout, for as long as nobody
    # asks it to swap out: idle by design, not a hang
    "psleep": {"idle": True},
}


def vm_waits_register(_: Any) -> None:
    """BSP, at boot: vm_wait's sleeps, as the liveness detector's waits."""
    md.register("waits", VM_WAITS)


SYSINIT("vm_waits", SI_SUB.SI_SUB_VM, SI_ORDER.SI_ORDER_ANY, vm_waits_register)


# -- the counters' predicates (vm/vm_page.h inlines) ---------------------------------------
def _free_and_cache() -> tuple[int, ...]:
    return tuple(cnt.load("v_free_count", "v_cache_count", "v_free_reserved",
                          "v_free_severe", "v_free_min", "v_free_target"))


def vm_page_count_severe() -> bool:
    f, c, _, severe, _, _ = _free_and_cache()
    return f + c < severe


def vm_page_count_min() -> bool:
    f, c, _, _, mn, _ = _free_and_cache()
    return f + c < mn


def vm_page_count_target() -> bool:
    f, c, _, _, _, target = _free_and_cache()
    return f + c < target


def vm_page_count_reserved() -> bool:
    f, c, reserved, _, _, _ = _free_and_cache()
    return f + c < reserved


def vm_paging_target() -> int:
    f, c, _, _, _, target = _free_and_cache()
    return target - (f + c)


# -- locks ---------------------------------------------------------------------------------
@md.site_transparent                # a macro of vm_page.h: its caller's site
def vm_page_lock_queues() -> None:
    mtx_lock(cnt.vm_page_queue_mtx)


@md.site_transparent                # a macro of vm_page.h: its caller's site
def vm_page_unlock_queues() -> None:
    mtx_unlock(cnt.vm_page_queue_mtx)


# -- queues (vm_pageq.c) -------------------------------------------------------------------
def vm_pageq_remove(m: KObj) -> None:
    """Take ``m`` off whatever paging queue it is on (page queues locked)."""
    q = m.queue
    if q == PQ_NONE:
        return
    if q == PQ_FREE:
        md.panic(f"vm_pageq_remove: page {m} is on the free queue")
    head, counter = _QUEUE[q]
    TAILQ_REMOVE(cnt.addr(head), m)
    cnt.inc(counter, -1)
    m.queue = PQ_NONE


def vm_pageq_enqueue(m: KObj, q: int) -> None:
    head, counter = _QUEUE[q]
    m.queue = q
    TAILQ_INSERT_TAIL(cnt.addr(head), m)
    cnt.inc(counter, 1)


def _vm_page_requeue(m: KObj, q: int) -> None:
    cur, wire = m.load("queue", "wire_count")
    if cur != q:
        if cur != PQ_NONE:
            if cur == PQ_FREE:
                md.panic(f"vm_pageq_remove: page {m} is on the free queue")
            head, counter = _QUEUE[cur]
            TAILQ_REMOVE(cnt.addr(head), m)
            cnt.inc(counter, -1)
            m.queue = PQ_NONE
        if wire == 0:
            vm_pageq_enqueue(m, q)


def vm_page_activate(m: KObj) -> None:
    _vm_page_requeue(m, PQ_ACTIVE)


def vm_page_deactivate(m: KObj) -> None:
    _vm_page_requeue(m, PQ_INACTIVE)


# -- objects and pages ---------------------------------------------------------------------
def vm_page_insert(m: KObj, obj: KObj, pindex: int) -> None:
    m.update(object=obj, pindex=pindex)
    HASH_INSERT(obj.pagehash, pindex, m)
    TAILQ_INSERT_TAIL(obj.memq, m)
    obj.inc("resident_page_count", 1)
    obj.inc("generation", 1)


def vm_page_remove(m: KObj) -> None:
    obj = m.object
    if obj is None:
        return
    HASH_REMOVE(obj.pagehash, m.pindex)
    TAILQ_REMOVE(obj.memq, m)
    obj.inc("resident_page_count", -1)
    obj.inc("generation", 1)
    m.object = None


def vm_page_lookup(obj: KObj, pindex: int) -> KObj | None:
    """The resident page of ``obj`` at ``pindex`` (the vm_page_buckets hash)."""
    return HASH_LOOKUP(obj.pagehash, pindex, struct_vm_page)


def vm_page_alloc(obj: KObj | None, pindex: int, req: int) -> KObj | None:
    """A free page, busy, inserted in ``obj`` at ``pindex``; NULL when free memory is
    below what this class of request may take."""
    page_req = req & VM_ALLOC_CLASS_MASK
    free_mtx = cnt.vm_page_queue_free_mtx
    mtx_lock_spin(free_mtx)
    f, c, reserved, intr_min = cnt.load("v_free_count", "v_cache_count", "v_free_reserved",
                                        "v_interrupt_free_min")
    if (f + c > reserved or (page_req != VM_ALLOC_NORMAL and f + c > intr_min)
            or (page_req == VM_ALLOC_INTERRUPT and f > 0)):
        m = TAILQ_FIRST(cnt.pq_free, struct_vm_page)
    else:
        m = None
    if m is None:
        mtx_unlock_spin(free_mtx)
        pagedaemon_wakeup()
        return None
    TAILQ_REMOVE(cnt.pq_free, m)
    cnt.v_free_count = f - 1
    mtx_unlock_spin(free_mtx)
    wired = 1 if req & VM_ALLOC_WIRED else 0
    if wired:
        cnt.inc("v_wire_count", 1)
    # A page just taken off the free queue belongs to its allocator: it is set up with
    # no lock, as vm_page_alloc did.
    m.update_racy(queue=PQ_NONE, flags=PG_BUSY | (PG_ZERO if req & VM_ALLOC_ZERO else 0),
                  wire_count=wired, hold_count=0, busy=0, valid=0, dirty=0, act_count=0)
    if req & VM_ALLOC_ZERO:
        memory.page_zero(m.phys_addr)
    if obj is not None:
        vm_page_insert(m, obj, pindex)
    if f - 1 + c < _free_min():
        pagedaemon_wakeup()
    return m


_thresholds: tuple[int, ...] | None = None


def _free_min() -> int:
    """v_free_min: set once at boot, never changed after (a CPU may remember it)."""
    global _thresholds
    if _thresholds is None:
        _thresholds = tuple(cnt.load("v_free_min", "v_free_reserved"))
    return _thresholds[0]


def vm_page_free(m: KObj) -> None:
    """Return ``m`` to the free queue (page queues locked, page busy, not wired)."""
    flags, wire, hold, busy = m.load("flags", "wire_count", "hold_count", "busy")
    if busy or not flags & PG_BUSY:
        md.panic(f"vm_page_free: freeing page {m} that is not busy "
                 f"(flags {flags:#x}, busy {busy})")
    if wire:
        md.panic(f"vm_page_free: freeing wired page {m} (wire_count {wire})")
    vm_pageq_remove(m)
    vm_page_remove(m)
    if hold:
        md.panic(f"vm_page_free: freeing held page {m}")
    if flags & PG_WANTED:
        wakeup(m.chan)                  # whoever waited for the busy page looks again
    m.update(flags=0, valid=0, dirty=0, queue=PQ_FREE)
    free_mtx = cnt.vm_page_queue_free_mtx
    mtx_lock_spin(free_mtx)
    TAILQ_INSERT_TAIL(cnt.pq_free, m)
    cnt.inc("v_free_count", 1)
    mtx_unlock_spin(free_mtx)
    vm_page_free_wakeup()


def vm_page_free_wakeup() -> None:
    """Wake the pagedaemon's and VM_WAIT's sleepers once memory is back above the mark."""
    if cnt.vm_pageout_pages_needed and not vm_page_count_min():
        cnt.vm_pageout_pages_needed = 0
        wakeup(cnt.addr("vm_pageout_pages_needed"))
    if cnt.vm_pages_needed and not vm_page_count_min():
        cnt.vm_pages_needed = 0
        wakeup(cnt.addr("v_free_count"))


def vm_page_wire(m: KObj) -> None:
    """Wire ``m``: off the paging queues, never paged out (page queues locked)."""
    mtx_assert(cnt.vm_page_queue_mtx, MA_OWNED, "vm page queue mutex")     # as 5.0 did
    w = m.wire_count
    if w == 0:
        vm_pageq_remove(m)
        cnt.inc("v_wire_count", 1)
    m.wire_count = w + 1
    KASSERT(w + 1 != 0, "vm_page_wire: wire_count overflow")


def vm_page_unwire(m: KObj, activate: int) -> None:
    """Drop one wiring; at zero the page goes to the active or inactive queue (page
    queues locked)."""
    mtx_assert(cnt.vm_page_queue_mtx, MA_OWNED, "vm page queue mutex")     # as 5.0 did
    w = m.wire_count
    if w <= 0:
        md.panic(f"vm_page_unwire: invalid wire count: {w} (page {m})")
    m.wire_count = w - 1
    if w == 1:
        cnt.inc("v_wire_count", -1)
        vm_pageq_enqueue(m, PQ_ACTIVE if activate else PQ_INACTIVE)


def vm_page_hold(m: KObj) -> None:
    m.hold_count += 1


def vm_page_unhold(m: KObj) -> None:
    h = m.hold_count - 1
    KASSERT(h >= 0, f"vm_page_unhold: hold count < 0 (page {m})")
    m.hold_count = h


def vm_page_dirty(m: KObj) -> None:
    m.dirty = VM_PAGE_BITS_ALL


def vm_page_flag_set(m: KObj, bits: int) -> None:
    m.flags |= bits


def vm_page_flag_clear(m: KObj, bits: int) -> None:
    m.flags &= ~bits


def vm_page_busy(m: KObj) -> None:
    flags = m.flags
    KASSERT(not flags & PG_BUSY, f"vm_page_busy: page {m} already busy")
    m.flags = flags | PG_BUSY


def vm_page_flash(m: KObj) -> None:
    flags = m.flags
    if flags & PG_WANTED:
        m.flags = flags & ~PG_WANTED
        wakeup(m.chan)


def vm_page_wakeup(m: KObj) -> None:
    """Clear PG_BUSY and wake whoever waits for the page."""
    flags = m.flags
    KASSERT(flags & PG_BUSY, f"vm_page_wakeup: page {m} not busy!!!")
    m.flags = flags & ~PG_BUSY
    vm_page_flash(m)


def vm_page_sleep_busy(m: KObj, also_m_busy: bool, msg: str) -> bool:
    """If ``m`` is busy, sleep until it is not and return True (the caller retries)."""
    flags, busy = m.load("flags", "busy")
    if flags & PG_BUSY or (also_m_busy and busy):
        m.flags = flags | PG_WANTED
        tsleep(m.chan, PVM, msg, 0)
        return True
    return False


def vm_page_grab(obj: KObj, pindex: int, allocflags: int) -> KObj | None:
    """The page of ``obj`` at ``pindex``, busy: the resident one (waiting while someone
    else has it busy) or a new one (waiting for memory). NULL only without RETRY."""
    while True:                                     # retrylookup:
        m = vm_page_lookup(obj, pindex)
        if m is not None:
            flags, busy = m.load("flags", "busy")
            if busy or flags & PG_BUSY:
                generation = obj.generation
                while obj.generation == generation:
                    flags, busy = m.load("flags", "busy")
                    if not (busy or flags & PG_BUSY):
                        break
                    m.flags = flags | PG_WANTED
                    tsleep(m.chan, PVM, "pgrbwt", 0)
                    if (allocflags & VM_ALLOC_RETRY) == 0:
                        return None
                continue                            # goto retrylookup
            if allocflags & VM_ALLOC_WIRED:
                vm_page_lock_queues()
                vm_page_wire(m)
                vm_page_unlock_queues()
            vm_page_busy(m)
            return m
        m = vm_page_alloc(obj, pindex, allocflags & ~VM_ALLOC_RETRY)
        if m is None:
            VM_WAIT()
            if (allocflags & VM_ALLOC_RETRY) == 0:
                return None
            continue                                # goto retrylookup
        return m


# -- waiting for memory (vm_pageout.c) -----------------------------------------------------
def pagedaemon_wakeup() -> None:
    if not cnt.vm_pages_needed and curproc() != cnt.pageproc:
        cnt.vm_pages_needed = 1
        wakeup(cnt.addr("vm_pages_needed"))


def vm_wait() -> None:
    """VM_WAIT: sleep until the pagedaemon has freed memory (Giant held by the caller)."""
    md.pcpu.count("vm_waits")
    if curproc() == cnt.pageproc:
        cnt.vm_pageout_pages_needed = 1
        tsleep(cnt.addr("vm_pageout_pages_needed"), PSWP, "VMWait", 0)
    else:
        if not cnt.vm_pages_needed:
            cnt.vm_pages_needed = 1
            wakeup(cnt.addr("vm_pages_needed"))
        tsleep(cnt.addr("v_free_count"), PVM, "vmwait", 0)


VM_WAIT = vm_wait
