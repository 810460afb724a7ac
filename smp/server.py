"""The machine server: one process, one thread, one ZeroMQ ROUTER loop.

It owns everything the CPUs share (DESIGN.md decision 1): physical memory and the kernel
MMU (``hw.physmem``), the swap device, kernel memory (``smp.objects``), the lock table and
the sleep channels (``smp.locks``), and the delivery of IPIs and grants between CPUs.
Because it applies every peer's requests one at a time, it is the machine's linearisation
point: the order in which it handles requests *is* the order in which they happened.

Loop: wait for the socket to become readable (bounded by ``POLL_MS`` so that the server
notices a dead launcher), then drain every queued message before sleeping again; more
CPUs means more messages per wake-up and less cost per message (TRANSPORT.md).

Errors: a request that waits for a reply and fails gets an ``ERR`` reply naming the problem
(the CPU's kernel then panics, as on a fatal trap). A *posted* request that fails cannot be
answered, so it panics the machine here (DESIGN.md decision 10). A message that is not
this protocol at all is counted and dropped; the server goes on serving everyone else.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable

import zmq

from hw.physmem import Fault, PhysMem, SwapDevice
from hw.protocol import ERR, OK, VERSION, Event, Op, ProtocolError, pack, unpack
from smp.lockcheck import LockKeyChecker
from smp.locks import Deadlock, LockError, LockTable
from smp.witness import Finding, Witness
from smp.objects import LOCK_KINDS, ObjectError, ObjectStore

POLL_MS = 200

# Which checks run, and their bounds (the config's debug.* keys; all on by default).
DEFAULT_DETECTORS: dict[str, Any] = {"witness": True, "deadlock": True, "lockkeys": True,
                                     "spin_max_s": 5.0, "watchdog_s": 5.0}

_KERNEL_ERRORS = (ObjectError, LockError, Fault)


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


class Server:
    """The shared half of one simulated machine."""

    def __init__(self, endpoint: str, ncpus: int, memory: int, swap: int,
                 pub_endpoint: str | None = None, stats_interval: float = 0.5,
                 detectors: dict[str, Any] | None = None) -> None:
        det = dict(DEFAULT_DETECTORS, **(detectors or {}))
        self.detectors = det
        self.findings: list[dict[str, Any]] = []
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
        self.witness = Witness(self._finding) if det["witness"] else None
        self.locks = LockTable(self.witness, bool(det["deadlock"]))
        self.lockkeys = (LockKeyChecker(self.kmem, self.locks, self._finding)
                         if det["lockkeys"] else None)
        self.spin_reported = False
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
        self.errors = 0
        self.unroutable = 0
        self.messages = 0
        self.running = True
        self.ctx: zmq.Context[Any] | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.handlers: dict[int, Callable[[Peer, int, str, list[Any]], Any]] = {
            Op.PLOAD: lambda p, t, s, a: self.mem.fetch(a[0], a[1]),
            Op.PSTORE: lambda p, t, s, a: self.mem.store(a[0], a[1]),
            Op.KLOAD: lambda p, t, s, a: self.mem.kfetch(a[0], a[1]),
            Op.KSTORE: lambda p, t, s, a: self.mem.kstore(a[0], a[1]),
            Op.KENTER: lambda p, t, s, a: self.mem.kenter(a[0], a[1]),
            Op.KREMOVE: lambda p, t, s, a: self.mem.kremove(a[0], a[1]),
            Op.PCOPY: lambda p, t, s, a: self.mem.copy_frame(a[0], a[1]),
            Op.PZERO: lambda p, t, s, a: self.mem.zero_frame(a[0]),
            Op.PSUM: lambda p, t, s, a: self.mem.checksum(a[0]),
            Op.SWAPOUT: lambda p, t, s, a: self.swap.write(self.mem, a[0], a[1]),
            Op.SWAPIN: lambda p, t, s, a: self.swap.read(self.mem, a[0], a[1]),
            Op.SWAPCOPY: lambda p, t, s, a: self.swap.copy(a[0], a[1]),
            Op.KPROBE: lambda p, t, s, a: self.mem.probe(a[0]),
            Op.DEFTYPE: lambda p, t, s, a: self.kmem.deftype(a[0], a[1]),
            Op.NEW: self._new,
            Op.NEWN: lambda p, t, s, a: [self._new(p, t, s, [a[0], a[2]])
                                         for _ in range(min(int(a[1]), 1 << 22))],
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
            Op.DEFKEYS: lambda p, t, s, a: (self.lockkeys.define_keys(a[0])
                                            if self.lockkeys is not None else None),
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
            Op.HANDOFF: lambda p, t, s, a: self.locks.handoff(t, p.cpu, a[0], a[1]),
            Op.SLEEP: self._sleep,
            Op.WAKEUP: lambda p, t, s, a: self.locks.wakeup(t, p.cpu, s, _chan(a[0]), a[1]),
            Op.UNSLEEP: lambda p, t, s, a: self.locks.unsleep(a[1], p.cpu, _chan(a[0])),
            Op.IPI: self._ipi,
            Op.REPORT: self._report,
        }

    # -- transport ---------------------------------------------------------------------
    def _send(self, ident: bytes, msg: list[Any]) -> None:
        assert self.sock is not None
        try:
            self.sock.send_multipart([ident, pack(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self.unroutable += 1           # peer gone (ROUTER_MANDATORY) or queue full

    def _reply(self, ident: bytes, seq: int, status: int, value: Any) -> None:
        if seq:
            self._send(ident, [Op.REPLY, seq, status, value])

    def _event_cpu(self, cpu: int, event: Event, *args: Any) -> None:
        peer = self.cpus.get(cpu)
        if peer is not None and not peer.gone:
            self._send(peer.ident, [Op.EVENT, event, *args])

    def _event_launcher(self, event: Event, *args: Any) -> None:
        if self.launcher is not None:
            self._send(self.launcher.ident, [Op.EVENT, event, *args])

    # -- lock operations that notify other CPUs ------------------------------------------
    def _send_grants(self, grants: list[tuple[int, int, int, bool]]) -> None:
        for cpu, tid, lock, owned in grants:
            self._event_cpu(cpu, Event.GRANT if owned else Event.WAKE, tid, lock)

    def _new(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        h = self.kmem.new(a[0], a[1])
        if self.lockkeys is not None:
            self.lockkeys.created(h, tid)
        return h

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
        if kind not in LOCK_KINDS:
            raise ObjectError(f"lock_init: {self.kmem.describe(a[0])} is not a lock field")
        self.locks.init(a[0], a[1], a[2], a[3])

    def _free(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        for addr in self.kmem.free(a[0]):
            if addr in self.locks.locks:
                self.locks.destroy(addr)

    def _acquire(self, p: Peer, tid: int, site: str, a: list[Any]) -> int:
        try:
            return self.locks.acquire(tid, p.cpu, site, a[0], a[1], int(a[2]))
        except Deadlock as e:
            self._finding(Finding("deadlock", str(e), [c[2] for c in e.cycle]))
            self.panic_machine({"message": str(e), "cpu": p.cpu, "tid": tid, "site": site,
                                "source": "server", "detector": "deadlock",
                                "stack": [f"{site}: ACQUIRE closed a cycle of waits"]})
            raise

    def _release(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._send_grants(self.locks.release(tid, p.cpu, site, a[0], a[1]))

    def _sleep(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        self._send_grants(self.locks.sleep(tid, p.cpu, site, _chan(a[0]), a[1]))

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
            self._publish(b"cpu", payload)
        elif kind == "final":
            p.final = payload
            self._check_halted()
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
            raise ProtocolError(f"protocol version {got!r} not supported "
                                f"(this server speaks {VERSION!r})")
        _, role, cpu, pid = args[:4]
        if role == "cpu":
            if not isinstance(cpu, int) or not 0 <= cpu < self.ncpus:
                raise ProtocolError(f"cpu id {cpu!r} out of range 0..{self.ncpus - 1}")
            if cpu in self.cpus:
                raise ProtocolError(f"cpu {cpu} said hello twice")
            peer = Peer(ident, role, cpu, int(pid))
            self.cpus[cpu] = peer
        elif role == "launcher":
            peer = Peer(ident, role, -1, int(pid))
            self.launcher = peer
        else:
            raise ProtocolError(f"unknown role {role!r}")
        self.peers[ident] = peer
        self._reply(ident, seq, OK, {"ncpus": self.ncpus, "npages": self.mem.npages,
                                     "swap_blocks": self.swap.nblocks})
        if self.started_at is not None and role == "cpu":
            self._event_cpu(cpu, Event.START, self.started_at)
        self._check_started()

    def _control(self, peer: Peer, op: int, seq: int, args: list[Any]) -> None:
        if op == Op.CTL_START:
            self.pending_start.append((peer.ident, seq))
            self._check_started()
        elif op == Op.CTL_HALT:
            self.pending_halt.append((peer.ident, seq))
            self._halt(str(args[0]), list(args[1]) if len(args) > 1 else [])
            self._check_halted()
        elif op == Op.CTL_REPORT:
            self._reply(peer.ident, seq, OK, self.report())
        elif op == Op.CTL_DUMP:
            self._reply(peer.ident, seq, OK, self.dumpstate())
        elif op == Op.CTL_FINAL:
            self.checked.clear()
            for cpu in self.cpus:
                self._event_cpu(cpu, Event.IPI, -1, "final_check", [])
            self._reply(peer.ident, seq, OK, None)

    def handle(self, ident: bytes, frame: bytes) -> None:
        self.messages += 1
        try:
            msg = unpack(frame)
            if not isinstance(msg, list) or len(msg) < 4:
                raise ProtocolError("a request is [op, seq, tid, site, args...]")
            op, seq, tid, site = msg[0], msg[1], msg[2], msg[3]
            if not isinstance(seq, int) or not isinstance(op, int):
                raise ProtocolError("op and seq must be integers")
        except Exception as e:  # noqa: BLE001 - anything a peer sends must not kill us
            self.bad_messages += 1
            self._send(ident, [Op.REPLY, 0, ERR, f"malformed message: {e}"])
            return
        args = msg[4:]
        peer = self.peers.get(ident)
        try:
            if op == Op.HELLO:
                self._hello(ident, seq, args)
                return
            if peer is None:
                raise ProtocolError("say HELLO first")
            peer.requests += 1
            if peer.cpu >= 0:
                self.last_heard[peer.cpu] = time.monotonic()
                self.silent.discard(peer.cpu)
            if op == Op.BYE:
                peer.gone = True
                if peer.role == "launcher":
                    self.running = False
                return
            if Op.CTL_START <= op <= Op.CTL_FINAL:
                if peer.role != "launcher":
                    raise ProtocolError("control requests are the launcher's")
                self._control(peer, op, seq, args)
                return
            handler = self.handlers.get(op)
            if handler is None:
                raise ProtocolError(f"unknown operation {op}")
            value = handler(peer, tid, site, args)
            self._reply(ident, seq, OK, value)
        except _KERNEL_ERRORS as e:
            self.errors += 1
            if seq or peer is None:
                self._reply(ident, seq, ERR, str(e))
            else:
                self._posted_error(peer, tid, site, op, e)
        except (ProtocolError, IndexError, TypeError, ValueError, KeyError,
                OverflowError, AttributeError) as e:
            self.bad_messages += 1
            if seq == 0 and peer is not None and peer.role == "cpu" and op != Op.HELLO:
                self._posted_error(peer, tid, site, op, ProtocolError(
                    f"malformed posted {_opname(op)}: {e}"))
            else:
                self._send(ident, [Op.REPLY, seq, ERR, f"bad {_opname(op)} request: {e}"])

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
                "bad_messages": self.bad_messages, "errors": self.errors,
                "locks": self.locks.lock_report(),
                "lock_profile": self.locks.profile_report()[:20],
                "memory": vars(self.mem.statistics()), "swap": self.swap.statistics(),
                "kmem": vars(self.kmem.statistics()), "vm": self._vmmeter()}

    def _vmmeter(self) -> dict[str, int]:
        """The page counts of the kernel's ``cnt`` (struct vmmeter), once the kernel has
        published it: what the swap plot and the exporters show as free pages."""
        obj = self.kmem.objs.get(self.kmem.lookup("cnt"))
        if obj is None:
            return {}
        return {k: v for k, v in obj.items()
                if k.startswith("v_") and k.endswith(("_count", "_min", "_target"))
                and isinstance(v, int)}

    def _check_liveness(self, now: float) -> None:
        """Spin locks held too long panic; a CPU silent for too long is reported."""
        bound = float(self.detectors["spin_max_s"])
        if bound > 0 and not self.spin_reported and self.panic is None:
            long_held = self.locks.spin_held_too_long(bound * 1e6)
            if long_held is not None:
                lk, us = long_held
                self.spin_reported = True
                msg = (f"spin lock {lk.name} held too long: {us / 1e6:.1f} s by thread "
                       f"{lk.owner} (taken @ {lk.site})")
                self._finding(Finding("spin", msg, [lk.site]))
                owner = self.locks.threads.get(lk.owner)
                self.panic_machine({"message": msg, "cpu": owner.cpu if owner else -1,
                                    "tid": lk.owner, "site": lk.site, "source": "server",
                                    "detector": "spin", "stack": []})
        limit = float(self.detectors["watchdog_s"])
        if limit > 0 and self.started_at is not None and self.halting is None:
            for cpu, last in self.last_heard.items():
                if now - last > limit and cpu not in self.silent and cpu not in self.dead:
                    self.silent.add(cpu)
                    self._finding(Finding("watchdog", f"watchdog: cpu {cpu} made no progress "
                                          f"for {now - last:.1f} s (no message)", []))
                    self._event_launcher(Event.STALLED, cpu, round(now - last, 1))

    def _tick(self) -> None:
        now = time.monotonic()
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
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(self.endpoint)
        if self.pub_endpoint:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, 1000)
            self.pub.bind(self.pub_endpoint)
        ppid = os.getppid()
        try:
            while self.running:
                self._tick()
                if not self.sock.poll(min(POLL_MS, int(self.stats_interval * 1000) or POLL_MS)):
                    if os.getppid() != ppid:      # the launcher is gone: so are we
                        break
                    continue
                while True:
                    try:
                        ident, *rest = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(rest) != 1:
                        self.bad_messages += 1
                        continue
                    self.handle(ident, rest[0])
        finally:
            self.sock.close(0)
            if self.pub is not None:
                self.pub.close(0)
            self.ctx.term()

    # -- the device protocol -----------------------------------------------------------
    def report(self) -> dict[str, Any]:
        return {
            "locks": self.locks.lock_report(),
            "lock_profile": self.locks.profile_report()[:50],
            "memory": vars(self.mem.statistics()),
            "swap": self.swap.statistics(),
            "kmem": vars(self.kmem.statistics()),
            "objects_by_type": self.kmem.count_by_type(),
            "field_sums": self.kmem.field_sums(),
            "symbols": self.kmem.symbol_values(),
            "server": {"messages": self.messages, "bad_messages": self.bad_messages,
                       "errors": self.errors, "unroutable": self.unroutable},
            "cpus": {c: p.final for c, p in sorted(self.cpus.items())},
            "cpu_pids": {c: p.pid for c, p in sorted(self.cpus.items())},
            "panic": self.panic,
            "findings": self.findings,
            "witness_order": self.witness.order() if self.witness is not None else {},
            "lockkey_checks": self.lockkeys.checked if self.lockkeys is not None else 0,
            "halt_reason": self.halting,
            "thread_locks": {tid: {"held": self.locks.held_by(tid),
                                   "waiting": self.locks.waiting_for(tid)}
                             for tid in self.locks.threads},
        }

    def dumpstate(self) -> str:
        return "\n".join([self.mem.dumpstate(), self.swap.dumpstate(),
                          self.kmem.dumpstate(), self.locks.dumpstate()])


def _chan(c: Any) -> Any:
    return tuple(c) if isinstance(c, list) else c


def _opname(op: Any) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op {op!r}"


def server_main(endpoint: str, ncpus: int, memory: int, swap: int,
                pub_endpoint: str | None = None, stats_interval: float = 0.5,
                detectors: dict[str, Any] | None = None) -> None:
    """Entry point of the server process (started by the launcher)."""
    from smp.proc_util import die_with_parent
    die_with_parent()
    try:
        Server(endpoint, ncpus, memory, swap, pub_endpoint, stats_interval,
               detectors).serve()
    except KeyboardInterrupt:
        pass
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise
