"""The machine's operations: one method per request a CPU can make, in one table.

``hw/protocol.py`` lists the requests (``Op``) and their arguments; this module is what
the server does for each, as sys161's device function tables or FreeBSD's ``sysent`` are
for theirs. :attr:`Operations.table` maps every operation to a method with the same
signature, ``(peer, tid, site, args) -> reply value``, and every method does one thing: a
load checks the field's lock key (``smp.machine.lockcheck``) and loads; an acquire asks
the lock table (``smp.machine.locks``) and sends the events it makes. The devices are
``smp.hw.physmem`` (page frames, the kernel MMU, the swap device), ``smp.machine.objects``
(kernel memory: typed objects, lists, hash tables), the lock table and the sleep queues
(``smp.machine.sleepq``). What the server itself keeps (the peers, the events, a panic)
the methods reach through ``srv``.

Arguments. The requests that name things the server keeps and sorts in its reports (types,
symbols, lock names) have their argument types checked before the handler runs
(:data:`ARGTYPES`): otherwise a peer could plant, say, an integer type name that breaks
every later report. The hot requests (loads, stores, lock operations) are not in that
table: their handlers and devices reject bad types themselves, and the server turns what
they raise into an error reply or, for a posted request, a panic (``smp.machine.server``).
Lengths and counts that would make the server allocate are bounded here (:func:`_length`,
:func:`_count`), and a CPU's stats sample is checked before it goes on the stream
(:func:`bad_sample`).

REPORT (a CPU telling the machine it panicked, finished, checked, asks to halt) is the
session's business: its entry is the server's own method.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Protocol

from smp.hw.physmem import PhysMem, SwapDevice
from smp.hw.protocol import F_LOCK, MAX_FRAME, Event, Op
from smp.machine.hangs import Hangs
from smp.machine.inflight import Inflight
from smp.machine.liveness import Liveness
from smp.machine.lockcheck import LockKeyChecker
from smp.machine.locks import Deadlock, Grant, LockTable
from smp.machine.objects import KmemExhausted, ObjectError, ObjectStore
from smp.machine.peers import Peer, Rejected, short
from smp.machine.sites import check_sources
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Finding, Witness

Handler = Callable[[Peer, int, str, list[Any]], Any]

MAX_COUNT = 1 << 16            # NEWN objects in one request (or one per page frame)

# The argument types of the requests that name things the server keeps and sorts in its
# reports (types, symbols, lock names), checked before the handler runs.
ARGTYPES: dict[int, tuple[type | tuple[type, ...], ...]] = {
    Op.DEFTYPE: (str, list), Op.NEW: (str, dict), Op.NEWN: (str, int, dict),
    Op.SYMBOL: (str, int), Op.LOOKUP: (str,), Op.COUNT: (str, list),
    Op.LOCK_INIT: (int, str, str, str, int), Op.POLICY: (str,), Op.IPI: (int, str),
    Op.RELINQUISH: (int,),
    Op.REPORT: (str,),
}


class _Server(Protocol):
    """What the operations use of the server (``smp.machine.server.Server``)."""
    mem: PhysMem
    swap: SwapDevice
    kmem: ObjectStore
    kmem_objects: int | None
    locks: LockTable
    sleepq: SleepQueues
    lockkeys: LockKeyChecker | None
    witness: Witness | None
    policy: dict[str, Any]
    rejected: collections.Counter[str]
    cpus: dict[int, Peer]
    cur_t: int
    reply_t: int
    live: Liveness
    hangs: Hangs | None
    inflight: Inflight | None

    def event_cpu(self, cpu: int, event: Event, *args: Any) -> None: ...
    def send_grants(self, grants: list[Grant]) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def panic_machine(self, report: dict[str, Any]) -> None: ...
    def cpu_report(self, p: Peer, tid: int, site: str, a: list[Any]) -> None: ...


class Operations:
    """What the server does for each request, by operation."""

    def __init__(self, srv: _Server) -> None:
        self.srv = srv
        self.mem, self.swap, self.kmem = srv.mem, srv.swap, srv.kmem
        self.locks, self.sleepq, self.lockkeys = srv.locks, srv.sleepq, srv.lockkeys
        self.inflight = srv.inflight
        self.table: dict[int, Handler] = {
            # physical memory, the kernel MMU, the swap device (hw.physmem)
            Op.PLOAD: self.pload, Op.PSTORE: self.pstore,
            Op.KLOAD: self.kload, Op.KSTORE: self.kstore,
            Op.KENTER: self.kenter, Op.KREMOVE: self.kremove,
            Op.PCOPY: self.pcopy, Op.PZERO: self.pzero, Op.PSUM: self.psum,
            Op.SWAPOUT: self.swapout, Op.SWAPIN: self.swapin, Op.SWAPCOPY: self.swapcopy,
            Op.KPROBE: self.kprobe,
            # kernel memory: typed objects (smp.machine.objects)
            Op.DEFTYPE: self.deftype, Op.NEW: self.new, Op.NEWN: self.newn,
            Op.FREE: self.free,
            Op.LOAD: self.load, Op.LOADN: self.loadn,
            Op.STORE: self.store, Op.STOREN: self.storen,
            Op.LOADR: self.loadr, Op.STORER: self.storer,
            Op.ADD: self.add, Op.ADDP: self.addp, Op.CAS: self.cas,
            Op.SETBITS: self.setbits, Op.CLRBITS: self.clrbits,
            Op.SYMBOL: self.symbol, Op.LOOKUP: self.lookup, Op.COUNT: self.count,
            Op.POLICY: self.policy,
            # lists and hash tables: fields too, checked under their lock keys
            Op.LIST_INSERT_HEAD: self.list_insert_head,
            Op.LIST_INSERT_TAIL: self.list_insert_tail,
            Op.LIST_REMOVE: self.list_remove, Op.LIST_FIRST: self.list_first,
            Op.LIST_NEXT: self.list_next, Op.LIST_ITEMS: self.list_items,
            Op.LIST_LEN: self.list_len, Op.LIST_SEARCH: self.list_search,
            Op.MAP_GET: self.map_get, Op.MAP_SET: self.map_set, Op.MAP_DEL: self.map_del,
            # locks (smp.machine.locks) and sleep channels (smp.machine.sleepq)
            Op.LOCK_INIT: self.lock_init, Op.LOCK_DESTROY: self.lock_destroy,
            Op.ACQUIRE: self.acquire, Op.RELEASE: self.release,
            Op.RELINQUISH: self.relinquish, Op.HANDOFF: self.handoff,
            Op.SLEEP: self.sleep, Op.WAKEUP: self.wakeup, Op.UNSLEEP: self.unsleep,
            # between CPUs, and the session
            Op.IPI: self.ipi,
            Op.REPORT: srv.cpu_report,
            Op.PING: self.ping,
        }

    def call(self, peer: Peer, op: int, tid: int, site: str, args: list[Any]) -> Any:
        """Check the request's arguments and handle it: its reply value."""
        handler = self.table.get(op)
        if handler is None:
            raise Rejected("unknown_op", f"unknown operation {op}")
        want = ARGTYPES.get(op)
        if want is not None:
            if len(args) < len(want) or not all(
                    isinstance(a, w) for a, w in zip(args, want)):
                raise Rejected("args", f"arguments {short(args)} are not "
                               f"({', '.join(getattr(w, '__name__', 'any') for w in want)}"
                               f", ...)")
        return handler(peer, tid, site, args)

    # -- physical memory and the kernel MMU ------------------------------------------
    def pload(self, p: Peer, tid: int, site: str, a: list[Any]) -> Any:
        return self.mem.fetch(a[0], _length(a[1]))

    def pstore(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.mem.store(a[0], a[1])

    def kload(self, p: Peer, tid: int, site: str, a: list[Any]) -> Any:
        value = self.mem.kfetch(a[0], _length(a[1]))
        if self.inflight is not None:
            self.inflight.kaccess(tid, site, a[0], "load")
        return value

    def kstore(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.mem.kstore(a[0], a[1])
        if self.inflight is not None:
            self.inflight.kaccess(tid, site, a[0], "store")

    def kenter(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        if self.inflight is not None and isinstance(a[0], int) and isinstance(a[1], list):
            self.inflight.kenter(tid, site, a[0], a[1])
        self.mem.kenter(a[0], a[1])

    def kremove(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        n = _count(a[1], 1 << 20)
        if self.inflight is not None and isinstance(a[0], int):
            self.inflight.kremove(tid, site, a[0], n)
        self.mem.kremove(a[0], n)

    def pcopy(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.mem.copy_frame(a[0], a[1])

    def pzero(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.mem.zero_frame(a[0])

    def psum(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.mem.checksum(a[0])

    def swapout(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.swap.write(self.mem, a[0], a[1])

    def swapin(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.swap.read(self.mem, a[0], a[1])

    def swapcopy(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.swap.copy(a[0], a[1])

    def kprobe(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.mem.probe(a[0])

    # -- kernel memory -----------------------------------------------------------------
    def deftype(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.kmem.deftype(a[0], a[1])

    def new(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self._kmem(p, tid, site, a, self._new, "NEW")

    def newn(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[int]:
        return self._kmem(p, tid, site, a, self._newn, "NEWN")

    def _kmem(self, p: Peer, tid: int, site: str, a: list[Any],
              alloc: Handler, what: str) -> Any:
        """NEW and NEWN: kernel memory that runs out is a panic of the machine, named,
        (and the request is refused, counted in ``rejected["kmem"]``), never a host out
        of memory."""
        try:
            return alloc(p, tid, site, a)
        except KmemExhausted as e:
            srv = self.srv
            srv.rejected["kmem"] += 1
            msg = (f"{e}: machine.kmem_objects is {srv.kmem_objects} (besides "
                   f"{self.mem.npages} vm_pages); {what} by cpu {p.cpu}")
            srv.panic_machine({"message": msg, "cpu": p.cpu, "tid": tid, "site": site,
                               "source": "server", "detector": "kmem",
                               "stack": [f"{site}: kernel memory exhausted"]})
            raise KmemExhausted(msg) from None

    def _new(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        h = self.kmem.new(a[0], a[1])
        if self.lockkeys is not None:
            self.lockkeys.created(h, tid)
        hangs = self.srv.hangs
        if hangs is not None and hangs.refs and a[1]:     # a count of references made
            hangs.created(tid, site, h, a[1])             # above 0 (vmspace_alloc's)
        return h

    def _newn(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[int]:
        """NEWN (type, count, init[, index_field[, list_head]]): ``count`` objects, in
        handle order. The optional arguments make the boot of a big machine one request
        (vm_page_startup: 262144 pages for 1 GiB): ``index_field`` (a field name, or "")
        is set to each object's index 0..count-1, and every object is appended to the
        list at address ``list_head`` (0: none), as that many LIST_INSERT_TAILs would."""
        n = _count(a[1], max(self.mem.npages, MAX_COUNT))
        index_field = a[3] if len(a) > 3 else ""
        head = a[4] if len(a) > 4 else 0
        if not isinstance(index_field, str) or not isinstance(head, int):
            raise Rejected("args", "NEWN: index_field must be a string, list_head an int")
        decl = self.kmem.types.get(a[0])
        if index_field and (decl is None or index_field not in decl.fields):
            raise ObjectError(f"newn {a[0]}: no field {index_field!r}")
        lst = None
        if head:
            self._head(tid, site, head, "store")
            lst = self.kmem.listhead(head)
        self.kmem.reserve(n, str(a[0]))           # all or nothing
        out = []
        for i in range(n):
            h = self._new(p, tid, site, [a[0], a[2]])
            if index_field:
                self.kmem.objs[h][index_field] = i
            if lst is not None:
                lst.insert_tail(h)
            out.append(h)
            if i % 4096 == 4095:             # 1 GiB of vm_pages takes seconds: keep the
                self.srv.live.send_heartbeats(time.monotonic(), False)  # CPUs told
        return out

    def free(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        by = f"{site} by thread {tid}, operation {self.srv.seq.ops}"
        for addr in self.kmem.free(a[0], by):
            if addr in self.locks.locks:
                self.locks.destroy(addr)

    def _access(self, tid: int, site: str, h: int, fields: list[str], kind: str) -> None:
        if self.lockkeys is not None:
            self.lockkeys.access(tid, site, h, fields, kind)
        hangs = self.srv.hangs
        if hangs is None:
            return
        if kind == "store":
            hangs.store(tid, site, h, fields)
        elif not hangs.counts.isdisjoint(fields):   # what a count's read-modify-write read
            hangs.loaded(tid, h, fields)

    def _stored(self, tid: int, site: str, h: int, field: str, value: Any) -> Any:
        """After an atomic store or read-modify-write: what follows a store; ``value``."""
        if self.srv.hangs is not None:
            self.srv.hangs.stored_by(tid, site, h, [field])
        self._after_store(tid, site, h, [field])
        return value

    def load(self, p: Peer, tid: int, site: str, a: list[Any]) -> Any:
        self._access(tid, site, a[0], [a[1]], "load")
        return self.kmem.load(a[0], a[1])

    def loadn(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[Any]:
        self._access(tid, site, a[0], a[1], "load")
        return self.kmem.loadn(a[0], a[1])

    def store(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._access(tid, site, a[0], [a[1]], "store")
        self.kmem.store(a[0], a[1], a[2])
        self._after_store(tid, site, a[0], [a[1]])

    def storen(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._access(tid, site, a[0], list(a[1]), "store")
        self.kmem.storen(a[0], a[1])
        self._after_store(tid, site, a[0], list(a[1]))

    def _after_store(self, tid: int, site: str, h: int, fields: list[str]) -> None:
        """After any store: the in-flight check, and the hold counts' ledger."""
        if self.inflight is not None:
            self.inflight.stored(tid, site, h, fields)
        stale = None                    # a lost update this store made, as lockkey saw it
        if self.lockkeys is not None and self.lockkeys.stale:
            stale = self.lockkeys.stale.pop((tid, h), None)
        hangs = self.srv.hangs
        if hangs is not None and hangs.counts:
            hangs.counted(tid, site, h, fields, stale)

    def loadr(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[Any]:
        """An intended race: not checked under the lock keys."""
        return self.kmem.loadn(a[0], a[1])

    def storer(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        """An intended race: not checked under the lock keys."""
        self.kmem.storen(a[0], a[1])
        self._after_store(tid, site, a[0], list(a[1]))

    def add(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        """atomic_fetchadd: atomic, so not checked under the lock keys."""
        return self._stored(tid, site, a[0], a[1], self.kmem.add(a[0], a[1], a[2]))

    def addp(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        """A posted add: a plain read-modify-write under the field's lock."""
        self._access(tid, site, a[0], [a[1]], "store")
        return self._stored(tid, site, a[0], a[1], self.kmem.add(a[0], a[1], a[2]))

    def cas(self, p: Peer, tid: int, site: str, a: list[Any]) -> bool:
        return self._stored(tid, site, a[0], a[1], self.kmem.cas(a[0], a[1], a[2], a[3]))

    def setbits(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._stored(tid, site, a[0], a[1], self.kmem.setbits(a[0], a[1], a[2]))

    def clrbits(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._stored(tid, site, a[0], a[1], self.kmem.clrbits(a[0], a[1], a[2]))

    def symbol(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.kmem.symbol(a[0], a[1])

    def lookup(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.kmem.lookup(a[0])

    def count(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        return self.kmem.count(a[0], a[1])

    def policy(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        """What the kernel registers at boot (DESIGN.md decision 12): the server enforces
        and reports it, and knows nothing of the kernel otherwise."""
        srv = self.srv
        kind, payload = a[0], a[1]
        if kind == "lock_keys":
            if not isinstance(payload, dict):
                raise Rejected("args", "POLICY lock_keys: a map of key -> [how, lock]")
            if self.lockkeys is not None:
                self.lockkeys.define_keys(payload)
        elif kind == "lock_order":
            if not isinstance(payload, dict):
                raise Rejected("args", "POLICY lock_order: {chains, exempt}")
            chains = [[str(n) for n in c] for c in payload.get("chains", [])]
            exempt = [str(n) for n in payload.get("exempt", [])]
            if srv.witness is not None:
                srv.witness.register_order(chains, exempt)
            payload = {"chains": chains, "exempt": exempt,
                       "classes": {str(k): str(v)
                                   for k, v in (payload.get("classes") or {}).items()}}
        elif kind == "scheduler_lock":
            self.sleepq.sched_lock_name = str(payload)
        elif kind == "invariants":
            if not isinstance(payload, list):
                raise Rejected("args", "POLICY invariants: a list of checks")
            payload = list(srv.policy.get("invariants", [])) + payload
        elif kind == "sources":
            try:
                payload = check_sources(payload)
            except ValueError as e:
                raise Rejected("args", f"POLICY {e}") from None
        elif kind == "liveness":
            if not isinstance(payload, dict):
                raise Rejected("args", "POLICY liveness: a map")
            if srv.hangs is not None:
                srv.hangs.policy(payload)
        elif kind in ("waits", "refs"):     # what sleeps wait for; counts of references
            if srv.hangs is not None:
                try:
                    (srv.hangs.add_waits if kind == "waits" else srv.hangs.add_refs)(payload)
                except TypeError as e:
                    raise Rejected("args", str(e)) from None
        elif kind == "inflight":
            if not isinstance(payload, dict):
                raise Rejected("args", "POLICY inflight: a map")
            if self.inflight is not None:
                try:
                    self.inflight.policy(payload)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    raise Rejected("args", f"POLICY inflight: {e!r}") from None
        elif kind not in ("vmstats", "counters", "procs"):
            raise Rejected("args", f"POLICY: unknown kind {short(kind)}")
        srv.policy[kind] = payload

    # -- lists and hash tables ---------------------------------------------------------
    def _head(self, tid: int, site: str, addr: int, kind: str) -> None:
        """A list head or hash table is a field too: reading or changing one is an access
        under the field's lock key."""
        if self.lockkeys is not None:
            try:
                h, field, _ = self.kmem.resolve(addr)
            except ObjectError:
                return                      # the list operation itself reports it
            self.lockkeys.access(tid, site, h, [field], kind)

    def list_insert_head(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._head(tid, site, a[0], "store")
        self.kmem.list_insert(a[0], a[1], head=True)

    def list_insert_tail(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._head(tid, site, a[0], "store")
        self.kmem.list_insert(a[0], a[1])

    def list_remove(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._head(tid, site, a[0], "store")
        self.kmem.list_remove(a[0], a[1])

    def list_first(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        self._head(tid, site, a[0], "load")
        return self.kmem.listhead(a[0]).head

    def list_next(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        self._head(tid, site, a[0], "load")
        return self.kmem.listhead(a[0]).after(a[1])

    def list_items(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[int]:
        self._head(tid, site, a[0], "load")
        return self.kmem.listhead(a[0]).items()

    def list_len(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        self._head(tid, site, a[0], "load")
        return len(self.kmem.listhead(a[0]).next)

    def list_search(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        self._head(tid, site, a[0], "load")
        return self.kmem.list_search(a[0], a[1], a[2], a[3])

    def map_get(self, p: Peer, tid: int, site: str, a: list[Any]) -> Any:
        self._head(tid, site, a[0], "load")
        return self.kmem.maphead(a[0]).get(a[1], 0)

    def map_set(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._head(tid, site, a[0], "store")
        table = self.kmem.maphead(a[0])
        table[a[1]] = a[2]

    def map_del(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._head(tid, site, a[0], "store")
        self.kmem.map_del(a[0], a[1])

    # -- locks and sleep channels ------------------------------------------------------
    def lock_init(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        h, f, kind = self.kmem.resolve(a[0])
        if kind != F_LOCK:
            raise ObjectError(f"lock_init: {self.kmem.describe(a[0])} is not a lock field")
        self.locks.init(a[0], a[1], a[2], a[3], a[4])

    def lock_destroy(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.locks.destroy(a[0])

    def acquire(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        srv = self.srv
        try:
            r = self.locks.acquire(tid, p.cpu, site, a[0], a[1], int(a[2]))
            free_at = self.locks.free_at(a[0])
            if free_at > srv.cur_t:              # released later in simulated time than
                srv.reply_t = free_at            # asked for: the acquirer waits till then
            for cpu, lock in self.locks.take_recalls():
                srv.event_cpu(cpu, Event.RECALL, lock)
            return r
        except Deadlock as e:
            srv.finding(Finding("deadlock", str(e), [c[2] for c in e.cycle]))
            srv.panic_machine({"message": str(e), "cpu": p.cpu, "tid": tid, "site": site,
                               "source": "server", "detector": "deadlock",
                               "stack": [f"{site}: ACQUIRE closed a cycle of waits"]})
            raise

    def release(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.srv.send_grants(self.locks.release(tid, p.cpu, site, a[0], a[1]))

    def relinquish(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        if p.gone:                   # after its BYE: the server took its lines back then
            return
        self.srv.send_grants(self.locks.relinquish(p.cpu, a[0]))

    def handoff(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.locks.handoff(tid, p.cpu, a[0], a[1])

    def sleep(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self.srv.send_grants(self.sleepq.sleep(tid, p.cpu, site, _chan(a[0]), a[1],
                                               str(a[3]) if len(a) > 3 and a[3] else ""))
        if self.srv.hangs is not None:      # a[2], a[3]: the timeout (ticks), the caller
            self.srv.hangs.sleep(tid, str(a[3]) if len(a) > 3 and a[3] else site,
                                 int(a[2]) if len(a) > 2 else 0)

    def wakeup(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[int]:
        chan = _chan(a[0])
        tids = self.sleepq.wakeup(tid, p.cpu, site, chan, a[1])
        if self.srv.hangs is not None:      # a[2]: the site that called wakeup
            self.srv.hangs.wakeup(chan, tids, site, tid,
                                  str(a[2]) if len(a) > 2 and a[2] else "")
        return tids

    def unsleep(self, p: Peer, tid: int, site: str, a: list[Any]) -> bool:
        took = self.sleepq.unsleep(a[1], _chan(a[0]))
        if took and self.srv.hangs is not None:
            self.srv.hangs.unslept(int(a[1]), site, tid, _chan(a[0]))
        return took

    # -- between CPUs ------------------------------------------------------------------
    def ipi(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        target, kind, args = a[0], a[1], a[2]
        if target not in self.srv.cpus:
            raise ObjectError(f"IPI to cpu {target}, which does not exist")
        self.srv.event_cpu(target, Event.IPI, p.cpu, kind, args)

    def ping(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        """Still here (an idle CPU's bus): nothing to do but to have heard it."""


# -- argument checks ---------------------------------------------------------------------
def _length(n: Any) -> int:
    """A byte length the server will allocate: at most a frame."""
    if not isinstance(n, int) or not 0 <= n <= MAX_FRAME:
        raise Rejected("range", f"length {short(n)} out of range 0..{MAX_FRAME}")
    return n


def _count(n: Any, most: int = MAX_COUNT) -> int:
    """A number of things the server will make or walk: at most ``most``."""
    if not isinstance(n, int) or not 0 <= n <= most:
        raise Rejected("range", f"count {short(n)} out of range 0..{most}")
    return n


def _chan(c: Any) -> Any:
    """A sleep channel as msgpack delivers it: a list becomes the tuple it was."""
    return tuple(c) if isinstance(c, list) else c


_SAMPLE_DEPTH = 6               # a CPU's stats sample nests at most this deep
_SAMPLE_ITEMS = 4096            # ... and holds at most this many values in all


def bad_sample(payload: Any, cpu: int) -> str | None:
    """Why a CPU's stats sample cannot go on the stream, or None: it must be a map with
    its sender's ``cpu`` id, and hold what JSON can: maps with string keys, lists,
    strings, numbers, booleans, null (a map with mixed key types broke the launcher's
    ``json.dumps(sort_keys=True)``), at most _SAMPLE_DEPTH deep and _SAMPLE_ITEMS big."""
    if not isinstance(payload, dict):
        return f"not a map: {short(payload)}"
    if payload.get("cpu") != cpu:
        return f"its cpu is {short(payload.get('cpu'))}, not the sender's {cpu}"
    budget = [_SAMPLE_ITEMS]

    def check(x: Any, depth: int) -> str | None:
        budget[0] -= 1
        if budget[0] < 0:
            return f"more than {_SAMPLE_ITEMS} values"
        if x is None or isinstance(x, (bool, int, float, str)):
            return None
        if depth >= _SAMPLE_DEPTH:
            return f"nested deeper than {_SAMPLE_DEPTH}"
        if isinstance(x, list):
            for v in x:
                why = check(v, depth + 1)
                if why:
                    return why
            return None
        if isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, str):
                    return f"a key that is not a string: {short(k)}"
                why = check(v, depth + 1)
                if why:
                    return why
            return None
        return f"a value JSON cannot hold: {type(x).__name__}"
    return check(payload, 0)


__all__ = ["ARGTYPES", "MAX_COUNT", "Operations", "bad_sample"]
