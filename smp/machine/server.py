"""The machine server: one process, one thread, one ZeroMQ ROUTER loop.

It owns everything the CPUs share (DESIGN.md decision 1): physical memory and the kernel
MMU (``hw.physmem``), the swap device, kernel memory (``smp.machine.objects``), the lock table and
the sleep channels (``smp.machine.locks``), and the delivery of IPIs and grants between CPUs.
Because it applies every peer's requests one at a time, it is the machine's linearisation
point: the order in which it handles requests *is* the order in which they happened.

Loop: wait for the socket to become readable (bounded by ``POLL_MS`` so that the server
notices a dead launcher), then drain every queued message before sleeping again; more
CPUs means more messages per wake-up and less cost per message (TRANSPORT.md).

Errors: a request that waits for a reply and fails gets an ``ERR`` reply naming the problem
(the CPU's kernel then panics, as on a fatal trap). A *posted* request that fails cannot be
answered, so it panics the machine here (DESIGN.md decision 10) -- but only for a CPU that
said hello: that CPU's kernel is broken. Anything else a peer can send (random bytes,
truncated, oversized or multi-frame messages, msgpack of the wrong shape or types, unknown
operations, a wrong protocol version, any request from an identity that never said hello,
a second launcher) gets an ``ERR`` reply ``[REPLY, seq, ERR, text]`` naming the problem
(``seq`` 0 when the message had none), is counted in ``bad_messages`` and, by kind, in
``rejected``, and changes nothing: the server goes on serving everyone else. No exception
a request can raise leaves :meth:`Server.handle`.

Floods: every queue is bounded (the ROUTER's RCV_HWM and SND_HWM per peer: a flooding
peer's sends wait, sends to a peer that never reads fail and are counted as unroutable);
a peer that never said hello gets NO_HELLO_REPLIES error replies, then its errors are
counted (``silenced``) but no longer answered; a stop request (the launcher's BYE) ends
the drain loop even mid-flood. A CPU's stats samples are checked before they go on the
stream (:func:`_bad_sample`); kernel memory has a bound (``machine.kmem_objects``) whose
exhaustion panics the machine.

Liveness (``hw.protocol.HEARTBEAT_S``): every CPU gets a ``HEARTBEAT`` event every HEARTBEAT_S (0.25 s),
so CPUs notice a dead server within 2 s; a CPU that said hello and then sends nothing at
all (its bus PINGs when idle) for ``PEER_LOST_S`` is reported to the launcher as
``STALLED``. The loop ticks (heartbeats, checks, stats) also while it drains a flood.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import traceback
from typing import Any, Callable

import zmq

from hw.clock import NEVER
from hw.physmem import Fault, PhysMem, SwapDevice
from hw.protocol import (CONTROL_OPS, ERR, F_LOCK, HEARTBEAT_S, MAX_FRAME, MAX_FRAME_HARD, OK,
                         PEER_LOST_S, VERSION, Event, Op, ProtocolError, field_addr, pack,
                         unpack_all)
from smp.machine.lockcheck import LockKeyChecker
from smp.machine.locks import Deadlock, LockError, LockTable
from smp.machine.objects import KmemExhausted, ObjectError, ObjectStore
from smp.machine.schedule import Divergence, Recording, Replay
from smp.machine.timekeeper import TimeKeeper
from smp.machine.witness import Finding, Witness

POLL_MS = 200

# Which checks run, and their bounds (the config's debug.* keys; all on by default).
DEFAULT_DETECTORS: dict[str, Any] = {"witness": True, "deadlock": True, "lockkeys": True,
                                     "spin_max_s": 5.0, "watchdog_s": 5.0}

_KERNEL_ERRORS = (ObjectError, LockError, Fault)
_MAX_ERROR_TEXT = 400          # an error reply quotes at most this much of the problem
_MAX_COUNT = 1 << 16           # NEWN objects in one request (or one per page frame)
TICK_EVERY = 64                # while draining, look at the clock every this many messages
# pyzmq's flags and options as plain ints: its enum wrappers cost per message
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
LIVENESS_CHECK_S = 0.05        # spin locks held too long, silent CPUs: looked for this often
# Bounds against a flood (issue 15): the ROUTER's queues per peer, in messages (a CPU
# that is stopped for seconds gets a few heartbeats and events a second: far below), and
# the ERR replies a peer that never said hello gets before it is answered no more.
RCV_HWM = 10_000
SND_HWM = 100_000
NO_HELLO_REPLIES = 256
MAX_STRANGERS = 4096           # identities without hello remembered (the oldest forgotten)


# The argument types of the requests that name things the server keeps and sorts in its
# reports (types, symbols, lock names): checked before the handler runs, so that a peer
# cannot plant, say, an integer type name that breaks every later report. The hot requests
# (loads, stores, lock operations) are not in this table: their handlers reject bad types.
_ARGTYPES: dict[int, tuple[type | tuple[type, ...], ...]] = {
    Op.DEFTYPE: (str, list), Op.NEW: (str, dict), Op.NEWN: (str, int, dict),
    Op.SYMBOL: (str, int), Op.LOOKUP: (str,), Op.COUNT: (str, list),
    Op.LOCK_INIT: (int, str, str, str, int), Op.POLICY: (str,), Op.IPI: (int, str),
    Op.RELINQUISH: (int,),
    Op.REPORT: (str,),
}


class Rejected(ProtocolError):
    """A message refused before it reached a handler; ``kind`` is the statistics key."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class Peer:
    __slots__ = ("ident", "role", "cpu", "pid", "final", "gone", "requests")

    def __init__(self, ident: bytes, role: str, cpu: int, pid: int) -> None:
        self.ident = ident
        self.role = role
        self.cpu = cpu
        self.pid = pid
        self.final: dict[str, Any] | None = None
        self.gone = False
        self.requests = 0


@dataclasses.dataclass
class TimeSpec:
    """How the machine's time runs (``hw/clock.py``), and what of the run is recorded or
    replayed (``smp/machine/schedule.py``)."""
    virtual: bool = False
    quantum_ns: int = 1_000_000
    end_ns: int = NEVER                 # the run's simulated end (virtual time)
    final_grace_ns: int = 500_000_000   # the end-of-run check runs within this much more
    record_path: str | None = None
    record_header: dict[str, Any] = dataclasses.field(default_factory=dict)
    replay: Replay | None = None


class Server:
    """The shared half of one simulated machine."""

    def __init__(self, endpoint: str, ncpus: int, memory: int, swap: int,
                 pub_endpoint: str | None = None, stats_interval: float = 0.5,
                 detectors: dict[str, Any] | None = None, lines: bool = True,
                 kmem_objects: int | None = None, timespec: TimeSpec | None = None) -> None:
        ts = timespec or TimeSpec()
        self.timespec = ts
        self.virtual = ts.virtual
        self.tk = TimeKeeper(ncpus, ts.quantum_ns, ts.end_ns,
                             ts.virtual and ts.replay is None)
        self.rec: Recording | None = None
        self.record_error: str | None = None
        if ts.record_path and ts.replay is None:
            try:
                self.rec = Recording(ts.record_path, ts.record_header)
            except OSError as e:
                self.record_error = f"{ts.record_path}: cannot record: {e.strerror}"
        self.replay = ts.replay
        self.replay_done = False
        self.cur_t = 0                  # the simulated time of the request being handled
        self.reply_t = 0                # what its reply says happened when (0: nothing)
        self.end_told: int | None = None     # the end the launcher was told of
        self.sent = [0] * ncpus              # machine events sent to each CPU
        self.ops = 0                         # the machine's operations handled so far
        # each CPU's last requests: what a dump shows as "touched last"
        self.recent: dict[int, collections.deque[tuple[Any, ...]]] = \
            collections.defaultdict(lambda: collections.deque(maxlen=32))
        det = dict(DEFAULT_DETECTORS, **(detectors or {}))
        self.detectors = det
        self.findings: list[dict[str, Any]] = []
        self.policy: dict[str, Any] = {}            # what the kernel registered (POLICY)
        self.endpoint = endpoint
        self.pub_endpoint = pub_endpoint
        self.stats_interval = stats_interval
        self.pub: zmq.Socket[Any] | None = None
        self.next_stats = 0.0
        self.published = 0
        self.ncpus = ncpus
        self.mem = PhysMem(memory)
        self.swap = SwapDevice(swap)
        self.kmem = ObjectStore()
        # kernel memory's bound (machine.kmem_objects): that many objects besides one
        # vm_page per page frame; None: no bound
        self.kmem_objects = kmem_objects
        if kmem_objects is not None:
            self.kmem.limit = kmem_objects + self.mem.npages
        self.witness = Witness(self._finding) if det["witness"] else None
        self.locks = LockTable(self.witness, bool(det["deadlock"]), lines)
        if ts.virtual:       # lock profiling and hold times in simulated time
            self.locks.clock = lambda: self.cur_t / 1000
        self.lockkeys = (LockKeyChecker(self.kmem, self.locks, self._finding)
                         if det["lockkeys"] else None)
        self.spin_reported = False
        self.spin_bound_ns = int(float(det["spin_max_s"]) * 1e9)
        self.last_heard: dict[int, float] = {}
        self.silent: set[int] = set()
        self.peers: dict[bytes, Peer] = {}
        self.cpus: dict[int, Peer] = {}
        self.launcher: Peer | None = None
        self.started_at: float | None = None
        self.panic: dict[str, Any] | None = None
        self.halting: str | None = None
        self.dead: set[int] = set()
        self.checked: set[int] = set()
        self.pending_start: list[tuple[bytes, int]] = []
        self.pending_halt: list[tuple[bytes, int]] = []
        self.bad_messages = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.strangers: dict[bytes, int] = {}       # no hello yet: ERR replies sent
        self.silenced = 0                           # errors not answered (see _error_reply)
        self.lost: dict[int, float] = {}            # cpu -> seconds silent when reported
        self.alive_at: dict[int, float] = {}        # cpu -> its heartbeat thread's last PING
        self.next_heartbeat = 0.0
        self.next_liveness = 0.0
        self.heartbeats = 0
        # smp.run.remote (``--listen``): "setup" binds the listen endpoint (with CURVE when
        # there are keys) after the private one, "teardown" stops its authenticator;
        # hello_info goes into every HELLO reply (the resolved config, for joining CPUs)
        self.curve: dict[str, Any] | None = None
        self.hello_info: dict[str, Any] = {}
        # (CURVE user id of the connection, role, cpu) -> why a HELLO is refused, or None;
        # conn_user: the User-Id (z85 public key) of the message being handled, looked up
        # only for peers without hello, on a server that listens with keys
        self.hello_check: Callable[[str | None, Any, Any], str | None] | None = None
        self.conn_user: str | None = None
        self.errors = 0
        self.unroutable = 0
        self.messages = 0
        self.running = True
        self.ctx: zmq.Context[Any] | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.handlers: dict[int, Callable[[Peer, int, str, list[Any]], Any]] = {
            Op.PLOAD: lambda p, t, s, a: self.mem.fetch(a[0], _length(a[1])),
            Op.PSTORE: lambda p, t, s, a: self.mem.store(a[0], a[1]),
            Op.KLOAD: lambda p, t, s, a: self.mem.kfetch(a[0], _length(a[1])),
            Op.KSTORE: lambda p, t, s, a: self.mem.kstore(a[0], a[1]),
            Op.KENTER: lambda p, t, s, a: self.mem.kenter(a[0], a[1]),
            Op.KREMOVE: lambda p, t, s, a: self.mem.kremove(a[0], _count(a[1], 1 << 20)),
            Op.PCOPY: lambda p, t, s, a: self.mem.copy_frame(a[0], a[1]),
            Op.PZERO: lambda p, t, s, a: self.mem.zero_frame(a[0]),
            Op.PSUM: lambda p, t, s, a: self.mem.checksum(a[0]),
            Op.SWAPOUT: lambda p, t, s, a: self.swap.write(self.mem, a[0], a[1]),
            Op.SWAPIN: lambda p, t, s, a: self.swap.read(self.mem, a[0], a[1]),
            Op.SWAPCOPY: lambda p, t, s, a: self.swap.copy(a[0], a[1]),
            Op.KPROBE: lambda p, t, s, a: self.mem.probe(a[0]),
            Op.DEFTYPE: lambda p, t, s, a: self.kmem.deftype(a[0], a[1]),
            Op.NEW: lambda p, t, s, a: self._kmem(p, t, s, a, self._new, "NEW"),
            Op.NEWN: lambda p, t, s, a: self._kmem(p, t, s, a, self._newn, "NEWN"),
            Op.FREE: self._free,
            Op.LOAD: lambda p, t, s, a: (self._access(t, s, a[0], [a[1]], "load"),
                                         self.kmem.load(a[0], a[1]))[1],
            Op.LOADN: lambda p, t, s, a: (self._access(t, s, a[0], a[1], "load"),
                                          self.kmem.loadn(a[0], a[1]))[1],
            Op.STORE: lambda p, t, s, a: (self._access(t, s, a[0], [a[1]], "store"),
                                          self.kmem.store(a[0], a[1], a[2]))[1],
            Op.STOREN: lambda p, t, s, a: (self._access(t, s, a[0], list(a[1]), "store"),
                                           self.kmem.storen(a[0], a[1]))[1],
            Op.LOADR: lambda p, t, s, a: self.kmem.loadn(a[0], a[1]),
            Op.STORER: lambda p, t, s, a: self.kmem.storen(a[0], a[1]),
            Op.POLICY: self._policy,
            Op.ADD: lambda p, t, s, a: self.kmem.add(a[0], a[1], a[2]),
            Op.ADDP: lambda p, t, s, a: (self._access(t, s, a[0], [a[1]], "store"),
                                         self.kmem.add(a[0], a[1], a[2]))[1],
            Op.CAS: lambda p, t, s, a: self.kmem.cas(a[0], a[1], a[2], a[3]),
            Op.SETBITS: lambda p, t, s, a: self.kmem.setbits(a[0], a[1], a[2]),
            Op.CLRBITS: lambda p, t, s, a: self.kmem.clrbits(a[0], a[1], a[2]),
            Op.SYMBOL: lambda p, t, s, a: self.kmem.symbol(a[0], a[1]),
            Op.LOOKUP: lambda p, t, s, a: self.kmem.lookup(a[0]),
            Op.COUNT: lambda p, t, s, a: self.kmem.count(a[0], a[1]),
            # list heads and hash tables are fields too: reading or changing one is an
            # access under the field's lock key
            Op.LIST_INSERT_HEAD: lambda p, t, s, a: (
                self._head(t, s, a[0], "store"), self.kmem.listhead(a[0]).insert_head(a[1])),
            Op.LIST_INSERT_TAIL: lambda p, t, s, a: (
                self._head(t, s, a[0], "store"), self.kmem.listhead(a[0]).insert_tail(a[1])),
            Op.LIST_REMOVE: lambda p, t, s, a: (
                self._head(t, s, a[0], "store"), self.kmem.listhead(a[0]).remove(a[1])),
            Op.LIST_FIRST: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"), self.kmem.listhead(a[0]).head)[1],
            Op.LIST_NEXT: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"), self.kmem.listhead(a[0]).after(a[1]))[1],
            Op.LIST_ITEMS: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"), self.kmem.listhead(a[0]).items())[1],
            Op.LIST_LEN: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"), len(self.kmem.listhead(a[0]).next))[1],
            Op.LIST_SEARCH: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"),
                self.kmem.list_search(a[0], a[1], a[2], a[3]))[1],
            Op.MAP_GET: lambda p, t, s, a: (
                self._head(t, s, a[0], "load"), self.kmem.maphead(a[0]).get(a[1], 0))[1],
            Op.MAP_SET: lambda p, t, s, a: (
                self._head(t, s, a[0], "store"),
                self.kmem.maphead(a[0]).__setitem__(a[1], a[2])),
            Op.MAP_DEL: lambda p, t, s, a: (
                self._head(t, s, a[0], "store"), self.kmem.map_del(a[0], a[1])),
            Op.LOCK_INIT: self._lock_init,
            Op.LOCK_DESTROY: lambda p, t, s, a: self.locks.destroy(a[0]),
            Op.ACQUIRE: self._acquire,
            Op.RELEASE: self._release,
            Op.RELINQUISH: self._relinquish,
            Op.HANDOFF: lambda p, t, s, a: self.locks.handoff(t, p.cpu, a[0], a[1]),
            Op.SLEEP: self._sleep,
            Op.WAKEUP: lambda p, t, s, a: self.locks.wakeup(t, p.cpu, s, _chan(a[0]), a[1]),
            Op.UNSLEEP: lambda p, t, s, a: self.locks.unsleep(a[1], p.cpu, _chan(a[0])),
            Op.IPI: self._ipi,
            Op.REPORT: self._report,
            Op.PING: lambda p, t, s, a: None,
        }

    # -- transport ---------------------------------------------------------------------
    def _send(self, ident: bytes, msg: list[Any]) -> None:
        assert self.sock is not None
        try:
            self.sock.send(ident, _SNDMORE_NOBLOCK)   # the raw calls: pyzmq's
            self.sock.send(pack(msg), _NOBLOCK)        # send_multipart costs more
        except zmq.ZMQError:
            self.unroutable += 1           # peer gone (ROUTER_MANDATORY) or queue full

    def _reply(self, ident: bytes, seq: int, status: int, value: Any) -> None:
        if seq:
            self._send(ident, [Op.REPLY, seq, status, value, self.reply_t, self.tk.horizon])

    def _event_cpu(self, cpu: int, event: Event, *args: Any) -> None:
        """An event to a CPU; it carries the time of the request that caused it."""
        peer = self.cpus.get(cpu)
        if peer is not None and not peer.gone:
            self._send(peer.ident, [Op.EVENT, event, *args, self.cur_t])
            self.sent[cpu] += 1
            if self.tk.enabled:                     # a waiting CPU runs again at that time
                self._horizon_to(self.tk.wake(cpu, self.cur_t))
            if self.replay is not None:
                self.replay.stuck.pop(cpu, None)    # what it waited for may be this

    def _event_launcher(self, event: Event, *args: Any) -> None:
        if self.launcher is not None:
            self._send(self.launcher.ident, [Op.EVENT, event, *args, self.cur_t])

    # -- virtual time (smp/machine/timekeeper.py) ------------------------------------------
    def _horizon_to(self, cpus: list[int]) -> None:
        """Tell the CPUs that wait for it how far they may run now; tell the launcher when
        every CPU has reached the run's end."""
        h = self.tk.horizon
        for cpu in cpus:
            self._event_cpu_control(cpu, Event.HORIZON, h)
        if self.tk.ended and self.end_told != self.tk.ended_at:
            self.end_told = self.tk.ended_at
            self._event_launcher(Event.END, self.tk.ended_at)

    def _event_cpu_control(self, cpu: int, event: Event, *args: Any) -> None:
        peer = self.cpus.get(cpu)
        if peer is not None and not peer.gone:
            self._send(peer.ident, [Op.EVENT, event, *args, 0])

    # -- lock operations that notify other CPUs ------------------------------------------
    def _send_grants(self, grants: list[tuple[int, int, int, bool]]) -> None:
        for cpu, tid, lock, owned in grants:
            self._event_cpu(cpu, Event.GRANT if owned else Event.WAKE, tid, lock)

    def _new(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        h = self.kmem.new(a[0], a[1])
        if self.lockkeys is not None:
            self.lockkeys.created(h, tid)
        return h

    def _kmem(self, p: Peer, tid: int, site: str, a: list[Any],
              alloc: Callable[[Peer, int, str, list[Any]], Any], what: str) -> Any:
        """NEW and NEWN: kernel memory that runs out is a panic of the machine, named,
        (and the request is refused, counted in ``rejected["kmem"]``), never a host out
        of memory."""
        try:
            return alloc(p, tid, site, a)
        except KmemExhausted as e:
            self.rejected["kmem"] += 1
            msg = (f"{e}: machine.kmem_objects is {self.kmem_objects} (besides "
                   f"{self.mem.npages} vm_pages); {what} by cpu {p.cpu}")
            self.panic_machine({"message": msg, "cpu": p.cpu, "tid": tid, "site": site,
                                "source": "server", "detector": "kmem",
                                "stack": [f"{site}: kernel memory exhausted"]})
            raise KmemExhausted(msg) from None

    def _newn(self, p: Peer, tid: int, site: str, a: list[Any]) -> list[int]:
        """NEWN (type, count, init[, index_field[, list_head]]): ``count`` objects, in
        handle order. The optional arguments make the boot of a big machine one request
        (vm_page_startup: 262144 pages for 1 GiB): ``index_field`` (a field name, or "")
        is set to each object's index 0..count-1, and every object is appended to the
        list at address ``list_head`` (0: none), as that many LIST_INSERT_TAILs would."""
        n = _count(a[1], max(self.mem.npages, _MAX_COUNT))
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
                self._heartbeats(time.monotonic(), check_lost=False)   # CPUs told
        return out

    def _access(self, tid: int, site: str, h: int, fields: list[str], kind: str) -> None:
        if self.lockkeys is not None:
            self.lockkeys.access(tid, site, h, fields, kind)

    def _head(self, tid: int, site: str, addr: int, kind: str) -> None:
        if self.lockkeys is not None:
            try:
                h, field, _ = self.kmem.resolve(addr)
            except ObjectError:
                return                      # the list operation itself reports it
            self.lockkeys.access(tid, site, h, [field], kind)

    def _finding(self, f: Finding) -> None:
        if len(self.findings) < 1000:
            self.findings.append(f.as_dict())

    def _lock_init(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        h, f, kind = self.kmem.resolve(a[0])
        if kind != F_LOCK:
            raise ObjectError(f"lock_init: {self.kmem.describe(a[0])} is not a lock field")
        self.locks.init(a[0], a[1], a[2], a[3], a[4])

    def _free(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        for addr in self.kmem.free(a[0]):
            if addr in self.locks.locks:
                self.locks.destroy(addr)

    def _acquire(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        try:
            r = self.locks.acquire(tid, p.cpu, site, a[0], a[1], int(a[2]))
            free_at = self.locks.free_at(a[0])
            if free_at > self.cur_t:             # released later in simulated time than
                self.reply_t = free_at           # asked for: the acquirer waits till then
            for cpu, lock in self.locks.take_recalls():
                self._event_cpu(cpu, Event.RECALL, lock)
            return r
        except Deadlock as e:
            self._finding(Finding("deadlock", str(e), [c[2] for c in e.cycle]))
            self.panic_machine({"message": str(e), "cpu": p.cpu, "tid": tid, "site": site,
                                "source": "server", "detector": "deadlock",
                                "stack": [f"{site}: ACQUIRE closed a cycle of waits"]})
            raise

    def _release(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._send_grants(self.locks.release(tid, p.cpu, site, a[0], a[1]))

    def _relinquish(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        if p.gone:                   # after its BYE: the server took its lines back then
            return
        self._send_grants(self.locks.relinquish(p.cpu, a[0]))

    def _sleep(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._send_grants(self.locks.sleep(tid, p.cpu, site, _chan(a[0]), a[1]))

    def _policy(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        """What the kernel registers at boot (DESIGN.md decision 12): the server enforces
        and reports it, and knows nothing of the kernel otherwise."""
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
            if self.witness is not None:
                self.witness.register_order(chains, exempt)
            payload = {"chains": chains, "exempt": exempt,
                       "classes": {str(k): str(v)
                                   for k, v in (payload.get("classes") or {}).items()}}
        elif kind == "scheduler_lock":
            self.locks.sched_lock_name = str(payload)
        elif kind == "invariants":
            if not isinstance(payload, list):
                raise Rejected("args", "POLICY invariants: a list of checks")
            payload = list(self.policy.get("invariants", [])) + payload
        elif kind not in ("vmstats", "counters", "procs"):
            raise Rejected("args", f"POLICY: unknown kind {_short(kind)}")
        self.policy[kind] = payload

    def _ipi(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        target, kind, args = a[0], a[1], a[2]
        if target not in self.cpus:
            raise ObjectError(f"IPI to cpu {target}, which does not exist")
        self._event_cpu(target, Event.IPI, p.cpu, kind, args)

    def _report(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        kind, payload = a[0], a[1]
        if kind == "panic":
            self.panic_machine(payload)
        elif kind == "stats":
            why = _bad_sample(payload, p.cpu)
            if why is None:
                self._publish(b"cpu", payload)
            else:                               # dropped and counted, not a panic: the
                self.bad_messages += 1          # stream is the monitors', not the kernel's
                self.rejected["stats"] += 1
        elif kind == "final":
            p.final = payload
            self._check_halted()
            self._check_replay_done()
        elif kind == "reads":                     # a CPU's read log (hw/record.py)
            if self.rec is not None:
                self.rec.reads(p.cpu, list(payload[0]), int(payload[1]), int(payload[2]))
        elif kind == "checked":                   # a CPU ran its final invariant check
            self.checked.add(p.cpu)
            if len(self.checked) >= len(self.cpus):
                self._event_launcher(Event.CHECKED, len(self.checked))
        elif kind == "halt":                      # the kernel asks to stop (shutdown)
            if self.halting is None:
                self._halt(f"halted by cpu {p.cpu}: {payload}", [])
                self._event_launcher(Event.HALT, str(payload))
        else:
            raise ProtocolError(f"unknown report kind {kind!r}")

    def _control_op(self, p: Peer, op: int, a: list[Any]) -> None:
        """Control traffic: liveness and time synchronisation; never recorded."""
        if op == Op.SYNC:
            # a CPU that has not yet read every event sent to it will act on them: it is
            # not waiting, whatever it says (its SYNC crossed an event)
            if p.cpu >= 0 and int(a[2]) >= self.sent[p.cpu]:
                self._horizon_to(self.tk.sync(p.cpu, int(a[0]), int(a[1])))
        elif op == Op.STUCK:
            if p.cpu >= 0 and self.replay is not None and not self.replay.stopped:
                if int(a[1]) < 0:
                    self._diverge(self.replay.reads_end(p.cpu, int(a[0])))
                    return
                self.replay.stuck[p.cpu] = (int(a[0]), int(a[1]), int(a[2]))
                self._pump()

    def _check_spin_virtual(self, p: Peer, t: int) -> None:
        """Virtual time: a spin lock held longer than ``debug.spin_max_s`` by a thread of
        this CPU (measured in the holder's simulated time) panics, as the wall-time
        watchdog does in wall time."""
        if self.spin_reported or self.panic is not None:
            return
        long_held = self.locks.spin_held_too_long(self.spin_bound_ns / 1000, cpu=p.cpu,
                                                  now_us=t / 1000)
        if long_held is not None:
            self._spin_panic(*long_held)

    # -- the machine's own actions (recorded; replayed from the record) ------------------
    def _act(self, kind: str, payload: Any) -> None:
        """Something the server does of its own accord, between two requests."""
        if self.rec is not None:
            self.rec.action(kind, payload)
        if kind == "final":
            self.checked.clear()
            for cpu in self.cpus:
                self._event_cpu(cpu, Event.FINAL)
            self._horizon_to(self.tk.extend(self.timespec.final_grace_ns))
        elif kind == "halt":
            self._halt(str(payload[0]), [int(c) for c in payload[1]])

    def _pump(self) -> None:
        """A replay: handle the queued requests in the record's order, as far as they
        have come; take the record's actions where it has them."""
        rp = self.replay
        assert rp is not None
        while not rp.stopped:
            for kind, payload in rp.actions_due():
                self._act(kind, payload)
            exp = rp.expected()
            if exp is None:
                leftover = next(((c, q[0]) for c, q in rp.queues.items() if q), None)
                if leftover is not None:
                    cpu, (_, msg) = leftover
                    self._diverge(rp.check(cpu, msg))
                break
            q = rp.queues.get(exp[0])
            if not q:
                div = rp.stalled()
                if div is not None:
                    self._diverge(div)
                break
            ident, msg = q[0]
            div = rp.check(exp[0], msg)
            if div is not None:
                self._diverge(div)
                break
            q.popleft()
            self._guarded(ident, self.peers.get(ident), msg[0], msg[1], msg[2], msg[3],
                          msg[4], msg[5:])
            rp.i += 1
            if rp.until and rp.i >= rp.until:
                self._stop_replay(None)
                break
        self._check_replay_done()

    def _diverge(self, div: Divergence | None) -> None:
        if div is not None and self.replay is not None and not self.replay.stopped:
            self._stop_replay(div)

    def _stop_replay(self, div: Divergence | None) -> None:
        """The replay ends here (its --until, or a divergence): every CPU stops where it
        is, and nothing any CPU asked for after it is handled but its final report, so
        that the machine stays as it was after the last operation replayed."""
        rp = self.replay
        assert rp is not None
        rp.stopped = True
        rp.divergence = div
        for cpu in self.cpus:
            self._event_cpu_control(cpu, Event.STOP, div.message if div else
                                    f"replay stopped after operation {rp.i}")
        for q in rp.queues.values():              # never handled: see handle_one
            rp.after_stop += len(q)
            q.clear()
        self._check_replay_done()

    def _check_replay_done(self) -> None:
        """Tell the launcher once the replay has ended and every CPU has reported."""
        rp = self.replay
        if rp is None or self.replay_done:
            return
        if not rp.stopped and rp.expected() is not None:
            return
        if any(p.final is None and c not in self.dead for c, p in self.cpus.items()):
            return
        self.replay_done = True
        if rp.divergence is not None:
            self._event_launcher(Event.DONE, False, rp.divergence.message)
        elif rp.stopped:
            self._event_launcher(Event.DONE, True, f"stopped after operation {rp.i}")
        else:
            self._event_launcher(Event.DONE, True, f"replayed {rp.i} operations")

    # -- panics and halts ----------------------------------------------------------------
    def panic_machine(self, report: dict[str, Any]) -> None:
        """The first panic stops the machine: every CPU is told, then the launcher."""
        if self.panic is not None:
            return
        self.panic = report
        for cpu in self.cpus:
            # a CPU that panicked itself knows; one whose posted request failed here
            # does not, and is told like the others
            if cpu != report.get("cpu") or report.get("source") == "server":
                self._event_cpu(cpu, Event.PANIC, report.get("cpu", -1),
                                report.get("message", ""))
        self._event_launcher(Event.PANIC, report.get("cpu", -1), report.get("message", ""))

    def _posted_error(self, peer: Peer, tid: int, site: str, op: int, err: Exception) -> None:
        self.panic_machine({
            "message": str(err), "cpu": peer.cpu, "tid": tid, "site": site,
            "source": "server", "op": _opname(op),
            "stack": [f"{site}: posted {_opname(op)} failed in the server"],
        })

    def _halt(self, reason: str, dead: list[int]) -> None:
        self.halting = self.halting or reason
        self.dead.update(dead)
        for cpu in self.cpus:
            if cpu not in self.dead:
                self._event_cpu(cpu, Event.HALT, reason)

    def _check_halted(self) -> None:
        if not self.pending_halt:
            return
        waiting = [c for c, p in self.cpus.items() if p.final is None and c not in self.dead]
        if waiting:
            return
        for ident, seq in self.pending_halt:
            self._reply(ident, seq, OK, None)
        self.pending_halt.clear()

    def _check_started(self) -> None:
        if len(self.cpus) < self.ncpus or not self.pending_start:
            return
        t0 = time.monotonic()
        self.started_at = t0
        for cpu in self.cpus:
            self._event_cpu(cpu, Event.START, t0)
        for ident, seq in self.pending_start:
            self._reply(ident, seq, OK, t0)
        self.pending_start.clear()

    # -- session and control -----------------------------------------------------------
    def _hello(self, ident: bytes, seq: int, args: list[Any]) -> None:
        if len(args) < 4 or args[0] != VERSION:
            got = args[0] if args else None
            raise Rejected("version", f"protocol version {_short(got)} not supported "
                           f"(this server speaks {VERSION!r})")
        _, role, cpu, pid = args[:4]
        if ident in self.peers:
            raise Rejected("hello", f"identity {_short(ident)} already said hello")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 32:
            raise Rejected("hello", f"pid {_short(pid)} is not a process id")
        if role == "launcher" and self.launcher is not None and not self.launcher.gone:
            raise Rejected("hello", "this machine already has a launcher")
        if self.hello_check is not None:          # smp.run.remote: keys bound to CPU ids
            why = self.hello_check(self.conn_user, role, cpu)
            if why:
                raise Rejected("hello", why)
        if role == "cpu":
            if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.ncpus:
                raise Rejected("hello", f"cpu id {_short(cpu)} out of range "
                               f"0..{self.ncpus - 1}")
            if cpu in self.cpus:
                held = self.cpus[cpu]
                raise Rejected("hello", f"cpu {cpu} is taken: a CPU (pid {held.pid}) "
                               f"said hello as cpu {cpu} already")
            peer = Peer(ident, role, cpu, int(pid))
            self.cpus[cpu] = peer
            self.last_heard[cpu] = time.monotonic()
        elif role == "launcher":
            peer = Peer(ident, role, -1, int(pid))
            self.launcher = peer
        else:
            raise Rejected("hello", f"unknown role {_short(role)}")
        self.peers[ident] = peer
        self.strangers.pop(ident, None)
        self._reply(ident, seq, OK, {"ncpus": self.ncpus, "npages": self.mem.npages,
                                     "swap_blocks": self.swap.nblocks,
                                     "now": time.monotonic(), **self.hello_info})
        if self.started_at is not None and role == "cpu":
            self._event_cpu(cpu, Event.START, self.started_at)
        self._check_started()

    def _control(self, peer: Peer, op: int, seq: int, args: list[Any]) -> None:
        if op == Op.CTL_START:
            self.pending_start.append((peer.ident, seq))
            self._check_started()
        elif op == Op.CTL_HALT:
            self.pending_halt.append((peer.ident, seq))
            dead = [int(c) for c in args[1]] if len(args) > 1 else []
            if self.replay is None:
                self._act("halt", [str(args[0]), dead])
            elif not self.replay.stopped:           # the launcher gives up on the replay
                self._stop_replay(None)
                self._halt(str(args[0]), dead)
            for c in dead:
                self._horizon_to(self.tk.leave(c))
            self._check_halted()
        elif op == Op.CTL_REPORT:
            self._reply(peer.ident, seq, OK, self.report())
        elif op == Op.CTL_DUMP:
            self._reply(peer.ident, seq, OK, self.dumpstate())
        elif op == Op.CTL_FINAL:
            if self.replay is None:                 # a replay takes it from the record
                self._act("final", None)
            self._reply(peer.ident, seq, OK, None)

    def reject(self, ident: bytes, seq: Any, kind: str, text: str) -> None:
        """Count a refused message and tell its sender why (never raises)."""
        self.bad_messages += 1
        self.rejected[kind] += 1
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 63:
            seq = 0
        self._error_reply(ident, seq, text)

    def _error_reply(self, ident: bytes, seq: int, text: str) -> None:
        """An ERR reply. A peer that never said hello gets NO_HELLO_REPLIES of them; its
        further errors are counted (``silenced``) and not answered: garbage from a peer
        that never reads would otherwise queue replies for it without bound."""
        if ident not in self.peers:
            n = self.strangers.get(ident, 0)
            if n >= NO_HELLO_REPLIES:
                self.silenced += 1
                return
            if n == 0 and len(self.strangers) >= MAX_STRANGERS:
                del self.strangers[next(iter(self.strangers))]     # the oldest goes
            self.strangers[ident] = n + 1
        self._send(ident, [Op.REPLY, seq, ERR, text[:_MAX_ERROR_TEXT]])

    def handle(self, ident: bytes, frame: bytes) -> None:
        """One frame: one request, or a batch (the posted requests a CPU buffered, then at
        most one call). A batch is refused whole, with one error, unless every request
        in it has the request shape and all but the last are posted (seq 0)."""
        if len(frame) > MAX_FRAME:
            self.messages += 1
            self.reject(ident, 0, "oversized", f"message of {len(frame)} bytes refused "
                        f"(at most {MAX_FRAME} bytes)")
            return
        try:
            msgs = unpack_all(frame)
        except Exception as e:  # noqa: BLE001 - anything a peer sends must not kill us
            self.messages += 1
            self.reject(ident, 0, "garbage", f"malformed message: not msgpack: "
                        f"{type(e).__name__}: {e}")
            return
        if len(msgs) > 1 and not all(isinstance(m, list) and len(m) >= 5 and m[1] == 0
                                     for m in msgs[:-1]):
            self.messages += 1
            self.reject(ident, 0, "shape", f"malformed batch of {len(msgs)} messages: "
                        f"every request but the last must be posted (seq 0)")
            return
        for msg in msgs:
            self.handle_one(ident, msg)

    def handle_one(self, ident: bytes, msg: Any) -> None:
        self.messages += 1
        if not isinstance(msg, list) or len(msg) < 5:
            self.reject(ident, 0, "shape", "malformed message: a request is "
                        "[op, seq, tid, site, t, args...]")
            return
        op, seq, tid, site, t = msg[0], msg[1], msg[2], msg[3], msg[4]
        if (not isinstance(seq, int) or not isinstance(op, int) or not isinstance(tid, int)
                or not isinstance(site, str) or isinstance(seq, bool) or seq < 0
                or not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < NEVER):
            self.reject(ident, seq, "types", "malformed message: op, seq (>= 0), tid and t "
                        "(>= 0) must be integers, site a string")
            return
        args = msg[5:]
        peer = self.peers.get(ident)
        if peer is None and op == Op.PING and ident.endswith(b"/hb"):
            owner = self.peers.get(ident[:-3])       # a CPU's heartbeat thread
            if owner is not None and owner.cpu >= 0:
                self.alive_at[owner.cpu] = time.monotonic()
                return
        if peer is None and op != Op.HELLO:
            self.reject(ident, seq, "no_hello", f"{_opname(op)} from {_short(ident)}, which "
                        f"never said HELLO: say HELLO first")
            return
        if self.replay is not None and peer is not None and self._ordered(peer, op, args):
            if not self.replay.stopped:
                # a replay: the request waits its turn (the record's order)
                self.replay.queues[peer.cpu].append((ident, msg))
                self.replay.stuck.pop(peer.cpu, None)
                self._pump()
                return
            if not (op == Op.REPORT and args and args[0] == "final"):
                # the replay stopped: the machine stays as it was then (a CPU that has not
                # yet read its STOP stops at its next wait); only the final reports pass
                self.replay.after_stop += 1
                return
        self._guarded(ident, peer, op, seq, tid, site, t, args)

    @staticmethod
    def _ordered(peer: Peer, op: int, args: list[Any]) -> bool:
        """Whether a request is part of the machine's order (recorded, replayed): a
        CPU's, before its final report (what it sends after, giving back its lines as it
        closes, changes nothing the run did), and not control traffic (hw/protocol.py:
        CONTROL_OPS, stats samples, read logs) or the goodbye."""
        if peer.role != "cpu" or peer.final is not None or op in CONTROL_OPS or op == Op.BYE:
            return False
        return not (op == Op.REPORT and args and args[0] in ("stats", "reads"))

    def _guarded(self, ident: bytes, peer: Peer | None, op: int, seq: int, tid: int,
                 site: str, t: int, args: list[Any]) -> None:
        """Dispatch one request; no exception a request can raise leaves here."""
        try:
            self._dispatch(ident, peer, op, seq, tid, site, t, args)
        except Rejected as e:
            if seq == 0 and peer is not None and peer.role == "cpu" and op != Op.HELLO:
                self.bad_messages += 1               # a CPU's kernel is broken: panic
                self.rejected[e.kind] += 1
                self._posted_error(peer, tid, site, op, e)
            else:
                self.reject(ident, seq, e.kind, f"{_opname(op)} refused: {e}")
        except Exception as e:  # noqa: BLE001 - a request must never kill the server
            self.bad_messages += 1
            self.rejected["crash"] += 1
            text = f"bad {_opname(op)} request: internal error {type(e).__name__}: {e}"
            if seq == 0 and peer is not None and peer.role == "cpu":
                self._posted_error(peer, tid, site, op, ProtocolError(text))
            else:
                self._error_reply(ident, seq, text)

    def _dispatch(self, ident: bytes, peer: Peer | None, op: int, seq: int, tid: int,
                  site: str, t: int, args: list[Any]) -> None:
        self.cur_t = self.reply_t = 0
        try:
            if op == Op.HELLO:
                self._hello(ident, seq, args)
                return
            assert peer is not None
            peer.requests += 1
            if peer.cpu >= 0:
                self.last_heard[peer.cpu] = time.monotonic()
                self.silent.discard(peer.cpu)
            if op == Op.BYE:
                peer.gone = True
                if peer.cpu >= 0:
                    self._send_grants(self.locks.drop_lines(peer.cpu))
                if peer.role == "launcher":
                    self.running = False
                return
            if Op.CTL_START <= op <= Op.CTL_FINAL:
                if peer.role != "launcher":
                    raise ProtocolError("control requests are the launcher's")
                self._control(peer, op, seq, args)
                return
            if op in CONTROL_OPS:
                self._control_op(peer, op, args)
                self._reply(ident, seq, OK, None)        # (control is posted; a call
                return                                   # of it still gets its answer)
            if self._ordered(peer, op, args) and not (self.replay and self.replay.stopped):
                self.ops += 1                       # the operation's number (hw/record.py)
                self.recent[peer.cpu].append((self.ops, _opname(op), site, tid, t,
                                              _short(args)))
                if self.rec is not None:
                    self.rec.request(peer.cpu, op, site, tid)
                if self.tk.enabled:
                    self._horizon_to(self.tk.request(peer.cpu, t))
            self.cur_t, self.reply_t = t, 0
            handler = self.handlers.get(op)
            if handler is None:
                raise Rejected("unknown_op", f"unknown operation {op}")
            want = _ARGTYPES.get(op)
            if want is not None:
                if len(args) < len(want) or not all(
                        isinstance(a, w) for a, w in zip(args, want)):
                    raise Rejected("args", f"arguments {_short(args)} are not "
                                   f"({', '.join(getattr(w, '__name__', 'any') for w in want)}"
                                   f", ...)")
            value = handler(peer, tid, site, args)
            self._reply(ident, seq, OK, value)
            if self.virtual and self.spin_bound_ns:
                self._check_spin_virtual(peer, t)
        except _KERNEL_ERRORS as e:
            self.errors += 1
            if seq or peer is None or peer.role != "cpu":
                self._error_reply(ident, seq, str(e))
            else:
                self._posted_error(peer, tid, site, op, e)
        except Rejected:
            raise
        except (ProtocolError, IndexError, TypeError, ValueError, KeyError,
                OverflowError, AttributeError) as e:
            self.bad_messages += 1
            self.rejected["args"] += 1
            if seq == 0 and peer is not None and peer.role == "cpu" and op != Op.HELLO:
                self._posted_error(peer, tid, site, op, ProtocolError(
                    f"malformed posted {_opname(op)}: {e}"))
            else:
                self._error_reply(ident, seq, f"bad {_opname(op)} request: {e}")

    # -- the stats stream -----------------------------------------------------------------
    def _publish(self, topic: bytes, payload: Any) -> None:
        """PUB: CPUs' samples as they come, the server's own every interval. A slow or
        absent subscriber costs nothing (PUB drops at its high-water mark)."""
        if self.pub is not None:
            try:
                self.pub.send_multipart([topic, pack(payload)], flags=zmq.NOBLOCK)
                self.published += 1
            except zmq.ZMQError:
                pass

    def sample(self) -> dict[str, Any]:
        return {"wall": time.time(), "messages": self.messages,
                "counters": self.policy.get("counters") or {}, "procs": self._procs(),
                "bad_messages": self.bad_messages, "errors": self.errors,
                "locks": self.locks.lock_report(),
                "lock_profile": self.locks.profile_report()[:20],
                "memory": vars(self.mem.statistics()), "swap": self.swap.statistics(),
                "kmem": vars(self.kmem.statistics()), "vm": self._vmmeter()}

    def _procs(self, most: int = 256) -> list[dict[str, Any]] | None:
        """The process table as ps shows it, read from the kernel objects and fields the
        kernel registered (``procs``); None until it has."""
        reg = self.policy.get("procs")
        if not isinstance(reg, dict):
            return None
        try:
            handles = self.kmem.listhead(int(reg["list"])).items()[:most]
        except (ObjectError, KeyError, TypeError, ValueError):
            return None
        fields = reg.get("fields") or {}
        tfields = reg.get("thread_fields") or {}
        states = reg.get("states") or {}
        res_field, res_bit = (reg.get("resident") or [None, 0])
        decl = None
        out = []
        for h in handles:
            obj = self.kmem.objs.get(h)
            if obj is None:
                continue
            row = {role: obj.get(f) for role, f in fields.items()}
            if tfields and reg.get("threads"):
                decl = decl or self.kmem.types.get(self.kmem.otype[h])
                idx = decl.order.index(reg["threads"]) if decl else -1
                tl = self.kmem.lists.get(field_addr(h, idx)) if idx >= 0 else None
                first = self.kmem.objs.get(tl.head) if tl is not None and tl.head else None
                for role, f in tfields.items():
                    row[role] = first.get(f) if first else None
            row["state"] = states.get(str(row.get("state")), row.get("state"))
            if res_field:
                row["swapped"] = not (int(row.get(res_field) or 0) & int(res_bit))
            out.append(row)
        return out

    def _vmmeter(self) -> dict[str, int]:
        """The machine's page counts (free, pages, free_target, ...), read from the kernel
        object and fields the kernel registered (``vmstats``): what the swap plot and the
        exporters show."""
        reg = self.policy.get("vmstats")
        if not isinstance(reg, dict):
            return {}
        obj = self.kmem.objs.get(self.kmem.lookup(str(reg.get("symbol"))))
        if obj is None:
            return {}
        fields = reg.get("fields") or {}
        return {role: obj[f] for role, f in fields.items()
                if isinstance(obj.get(f), int)}

    def _spin_panic(self, lk: Any, us: float) -> None:
        self.spin_reported = True
        msg = (f"spin lock {lk.name} held too long: {us / 1e6:.1f} s by thread "
               f"{lk.owner} (taken @ {lk.site})")
        self._finding(Finding("spin", msg, [lk.site]))
        owner = self.locks.threads.get(lk.owner)
        self.panic_machine({"message": msg, "cpu": owner.cpu if owner else -1,
                            "tid": lk.owner, "site": lk.site, "source": "server",
                            "detector": "spin", "stack": []})

    def _check_liveness(self, now: float) -> None:
        """Spin locks held too long panic (in wall time; in virtual time the check runs
        with each request, in simulated time); a CPU silent for too long is reported."""
        bound = float(self.detectors["spin_max_s"])
        if (bound > 0 and not self.virtual and not self.spin_reported
                and self.panic is None):
            long_held = self.locks.spin_held_too_long(bound * 1e6)
            if long_held is not None:
                self._spin_panic(*long_held)
        limit = float(self.detectors["watchdog_s"])
        # (not in a replay: there the server itself holds CPUs back, in the record's order)
        if (limit > 0 and self.started_at is not None and self.halting is None
                and self.replay is None):
            for cpu, last in self.last_heard.items():
                if now - last > limit and cpu not in self.silent and cpu not in self.dead:
                    self.silent.add(cpu)
                    self._finding(Finding("watchdog", f"watchdog: cpu {cpu} made no progress "
                                          f"for {now - last:.1f} s (no message)", []))
                    self._event_launcher(Event.STALLED, cpu, round(now - last, 1))

    def _heartbeats(self, now: float, check_lost: bool = True) -> None:
        """Every CPU hears from the server at least every HEARTBEAT_S; a CPU that said
        hello and then sent nothing for PEER_LOST_S is reported to the launcher. Silence
        is judged only when the receive queue has just been drained (``check_lost``):
        while the server itself is busy, a CPU's messages wait in the queue unread."""
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + HEARTBEAT_S
        for cpu, peer in self.cpus.items():
            if peer.gone or peer.final is not None or cpu in self.dead:
                continue
            self._send(peer.ident, [Op.EVENT, Event.HEARTBEAT])
            self.heartbeats += 1
            quiet = now - max(self.last_heard.get(cpu, now), self.alive_at.get(cpu, 0.0))
            if check_lost and quiet > PEER_LOST_S and cpu not in self.lost:
                self.lost[cpu] = round(quiet, 2)
                self._event_launcher(Event.STALLED, cpu, round(quiet, 1))

    def _tick(self, drained: bool = True) -> None:
        now = time.monotonic()
        self._heartbeats(now, check_lost=drained)
        if now >= self.next_liveness:          # it walks every lock: not per message
            self.next_liveness = now + LIVENESS_CHECK_S
            self._check_liveness(now)
        if self.pub is not None and self.started_at is not None and now >= self.next_stats:
            self.next_stats = now + self.stats_interval
            self._publish(b"server", self.sample())

    # -- the loop ----------------------------------------------------------------------
    def serve(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # every queue bounded: a peer that floods, or never reads, fills its own pipe
        # (its sends then wait: backpressure; our sends to it fail: counted unroutable)
        self.sock.setsockopt(zmq.RCVHWM, RCV_HWM)
        self.sock.setsockopt(zmq.SNDHWM, SND_HWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_HARD)
        self.sock.bind(self.endpoint)             # private: the launcher, local CPUs
        if self.curve is not None:                # smp.run.remote: the --listen endpoint,
            self.curve["setup"](self.ctx, self.sock)     # bound after (options apply to it)
        if self.pub_endpoint:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, 1000)
            self.pub.bind(self.pub_endpoint)
        ppid = os.getppid()
        sock = self.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        timeout_ms = min(POLL_MS, int(self.stats_interval * 1000) or POLL_MS)
        try:
            while self.running:
                self._tick()
                if not poller.poll(timeout_ms):
                    if os.getppid() != ppid:      # the launcher is gone: so are we
                        break
                    continue
                n = 0
                # drain what is queued: zero-copy frames say cheaply whether more parts
                # follow, and a poll(0) is cheaper than a recv that raises zmq.Again
                while True:
                    try:
                        f = sock.recv(_NOBLOCK, copy=False)
                    except zmq.Again:                 # poll said ready; never mind
                        break
                    ident, more = f.bytes, f.more
                    rest = []
                    while more:
                        f = sock.recv(_NOBLOCK, copy=False)
                        rest.append(f.bytes)
                        more = f.more
                    n += 1
                    if self.hello_check is not None:
                        self.conn_user = (_user_id(f) if ident not in self.peers
                                          else None)
                    if n % TICK_EVERY == 0:           # a flood must not stop heartbeats
                        self._tick(drained=False)
                    if len(rest) != 1:
                        self.messages += 1
                        self.reject(ident, 0, "frames", f"a message is one frame, not "
                                    f"{len(rest)}")
                    else:
                        self.handle(ident, rest[0])
                    if not self.running or not poller.poll(0):   # a BYE mid-flood ends it
                        break
        finally:
            self.close_record()
            self.sock.close(0)
            if self.pub is not None:
                self.pub.close(0)
            if self.curve is not None:
                self.curve["teardown"]()
            self.ctx.term()

    def close_record(self) -> None:
        if self.rec is not None:
            try:
                self.rec.close({"panic": bool(self.panic), "halt": self.halting})
            except OSError:
                pass

    def schedule_report(self) -> dict[str, Any]:
        """What was recorded, or how the replay went."""
        out: dict[str, Any] = {"time": "virtual" if self.virtual else "wall",
                               "sync": self.tk.statistics() if self.tk.enabled else {}}
        if self.rec is not None:
            try:
                self.rec.flush()
            except OSError as e:
                self.record_error = self.record_error or f"cannot record: {e.strerror}"
            out["record"] = {"path": self.rec.path, "operations": self.rec.requests}
        if self.record_error:
            out["record_error"] = self.record_error
        rp = self.replay
        if rp is not None:
            out["replay"] = {"operations": rp.i, "recorded": rp.total,
                             "until": rp.until or None,
                             "divergence": rp.divergence.as_dict() if rp.divergence else None,
                             "damage": rp.rec.damage, "after_stop": rp.after_stop}
        return out

    # -- the device protocol -----------------------------------------------------------
    def report(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule_report(),
            "recent": {str(c): list(q) for c, q in sorted(self.recent.items())},
            "locks": self.locks.lock_report(),
            "lock_profile": self.locks.profile_report()[:50],
            "memory": vars(self.mem.statistics()),
            "swap": self.swap.statistics(),
            "kmem": vars(self.kmem.statistics()),
            "objects_by_type": self.kmem.count_by_type(),
            "field_sums": self.kmem.field_sums(),
            "symbols": self.kmem.symbol_values(),
            "server": {"messages": self.messages, "bad_messages": self.bad_messages,
                       "rejected": dict(sorted(self.rejected.items())),
                       "errors": self.errors, "unroutable": self.unroutable,
                       "silenced": self.silenced,
                       "heartbeats": self.heartbeats,
                       "lines": self.locks.line_report(),
                       "unresponsive": {str(c): s for c, s in sorted(self.lost.items())},
                       "rss_mb": _rss_mb(), "rss_peak_mb": _rss_mb("VmHWM")},
            "dead_cpus": self.dead_cpus(),
            "cpus": {c: p.final for c, p in sorted(self.cpus.items())},
            "cpu_pids": {c: p.pid for c, p in sorted(self.cpus.items())},
            "panic": self.panic,
            "findings": self.findings,
            "witness_order": self.witness.order() if self.witness is not None else {},
            "policy": self.policy,
            "lock_names": {str(h): n for h, n in self.locks.names.items()},
            "lockkey_checks": self.lockkeys.checked if self.lockkeys is not None else 0,
            "halt_reason": self.halting,
            "thread_locks": {tid: {"held": self.locks.held_by(tid),
                                   "waiting": self.locks.waiting_for(tid)}
                             for tid in self.locks.threads},
        }

    def dead_cpus(self) -> dict[int, dict[str, Any]]:
        """For every CPU the launcher declared dead or the server found unresponsive: its
        pid and the locks its threads held (and waited for) when it went."""
        out: dict[int, dict[str, Any]] = {}
        for cpu in sorted(self.dead | set(self.lost)):
            peer = self.cpus.get(cpu)
            held, waiting = [], []
            for tid, t in sorted(self.locks.threads.items()):
                if t.cpu != cpu:
                    continue
                held += [{"tid": tid, **h} for h in self.locks.held_by(tid)]
                w = self.locks.waiting_for(tid)
                if w is not None:
                    waiting.append({"tid": tid, **w})
            out[cpu] = {"pid": peer.pid if peer else None, "held": held, "waiting": waiting,
                        "unresponsive_s": self.lost.get(cpu)}
        return out

    def dumpstate(self) -> str:
        return "\n".join([self.mem.dumpstate(), self.swap.dumpstate(),
                          self.kmem.dumpstate(), self.locks.dumpstate()])


def held_locks_line(cpu: int, info: dict[str, Any]) -> str:
    """One line for the run's problems: what a dead CPU's threads held."""
    held = ", ".join(f"{h['lock']} ({'shared' if h['mode'] == 'shared' else 'excl'}, "
                     f"thread {h['tid']} @ {h['site']})" for h in info.get("held", []))
    return f"cpu{cpu}'s threads held: {held or 'no locks'}"


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmHWM``: its peak) in MiB, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _length(n: Any) -> int:
    if not isinstance(n, int) or not 0 <= n <= MAX_FRAME:
        raise Rejected("range", f"length {_short(n)} out of range 0..{MAX_FRAME}")
    return n


def _count(n: Any, most: int = _MAX_COUNT) -> int:
    if not isinstance(n, int) or not 0 <= n <= most:
        raise Rejected("range", f"count {_short(n)} out of range 0..{most}")
    return n


_SAMPLE_DEPTH = 6               # a CPU's stats sample nests at most this deep
_SAMPLE_ITEMS = 4096            # ... and holds at most this many values in all


def _bad_sample(payload: Any, cpu: int) -> str | None:
    """Why a CPU's stats sample cannot go on the stream, or None: it must be a map with
    its sender's ``cpu`` id, and hold what JSON can: maps with string keys, lists,
    strings, numbers, booleans, null (a map with mixed key types broke the launcher's
    ``json.dumps(sort_keys=True)``), at most _SAMPLE_DEPTH deep and _SAMPLE_ITEMS big."""
    if not isinstance(payload, dict):
        return f"not a map: {_short(payload)}"
    if payload.get("cpu") != cpu:
        return f"its cpu is {_short(payload.get('cpu'))}, not the sender's {cpu}"
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
                    return f"a key that is not a string: {_short(k)}"
                why = check(v, depth + 1)
                if why:
                    return why
            return None
        return f"a value JSON cannot hold: {type(x).__name__}"
    return check(payload, 0)


def _user_id(frame: Any) -> str | None:
    """The ZAP User-Id of a received frame's connection (CURVE: the client's public key,
    z85), or None (the private endpoint authenticates nobody)."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user if isinstance(user, str) and user else None


def _chan(c: Any) -> Any:
    return tuple(c) if isinstance(c, list) else c


def _opname(op: Any) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op {op!r}"


def server_main(endpoint: str, ncpus: int, memory: int, swap: int,
                pub_endpoint: str | None = None, stats_interval: float = 0.5,
                detectors: dict[str, Any] | None = None, listen: Any = None,
                hello: dict[str, Any] | None = None, lines: bool = True,
                kmem_objects: int | None = None, timespec: TimeSpec | None = None) -> None:
    """Entry point of the server process (started by the launcher). ``listen``: an
    ``smp.run.remote.ListenSpec`` when CPUs join from other hosts; ``hello``: what their
    HELLO replies carry (the resolved config)."""
    from smp.run.proc_util import die_with_parent
    die_with_parent()
    try:
        server = Server(endpoint, ncpus, memory, swap, pub_endpoint, stats_interval,
                        detectors, lines, kmem_objects, timespec)
        if listen is not None:
            from smp.run.remote import attach
            attach(server, listen, hello or {})
        server.serve()
    except KeyboardInterrupt:
        pass
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise
