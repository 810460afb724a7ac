"""The machine server: one process, one thread, one ZeroMQ ROUTER loop.

It owns everything the CPUs share (DESIGN.md decision 1): physical memory and the kernel
MMU (``smp.hw.physmem``), the swap device, kernel memory (``smp.machine.objects``), the lock
table (``smp.machine.locks``) and the sleep channels (``smp.machine.sleepq``), and the
delivery of IPIs and grants between CPUs. Because it applies every peer's requests one at
a time, it is the machine's linearisation point: the order in which it handles requests
*is* the order in which they happened.

This module is the loop and its peers: the transport, the session (hello, bye, the
identities that never said hello), dispatch, the launcher's control requests, panics and
halts. The rest of the server is in parts, each with its own state, that the loop calls
and that reach back to it through ``srv``:

* ``smp.machine.ops``: the operation table, one method per request, and the argument
  checks;
* ``smp.machine.sequencer``: the machine's order: virtual time's horizon, the record, a
  replay, the timeline;
* ``smp.machine.liveness``: heartbeats, the watchdog, spin locks held too long;
* ``smp.machine.publish``: the stats stream, the report, the dump.

The detectors (``smp.machine.witness``, ``smp.machine.lockcheck``, the deadlock check of
the lock table, ``smp.machine.hangs``, ``smp.machine.inflight``) are told of what the
operations do, and report findings here.

Loop: wait for the socket to become readable (bounded by ``POLL_MS`` so that the server
notices a dead launcher), then drain every queued message before sleeping again; more
CPUs means more messages per wake-up and less cost per message (TRANSPORT.md). Before it
sleeps, the server *spins* for ``machine.server_spin`` (500 us by default): it looks at
its socket again and again, yielding the host CPU between looks. The machine is bound by
the latency of its round trips, not by the server's work (the default run keeps the
server's handlers about a third busy and the host's two cores half used): a CPU that
waits for a reply is on the machine's critical path, and a server asleep in ``poll``
adds a wake-up of its own to every round trip. Spinning took the default run from 0.47
to 0.75 simulated seconds per wall second on the 2-core host (16 CPUs: 0.39 to 0.57);
beside two busy loops it neither helped nor hurt. The spin only follows traffic: a
machine with nothing to do costs one spin per wake-up, then sleeps.

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
stream (``smp.machine.ops.bad_sample``); kernel memory has a bound
(``machine.kmem_objects``) whose exhaustion panics the machine. The loop ticks
(heartbeats, checks, stats) also while it drains a flood.
"""

from __future__ import annotations

import collections
import os
import time
import traceback
from typing import Any, Callable

import zmq

from smp.hw.clock import NEVER
from smp.hw.physmem import Fault, PhysMem, SwapDevice
from smp.hw.protocol import (CONTROL_OPS, ERR, MAX_FRAME, MAX_FRAME_HARD, OK, VERSION, Event, Op,
                             ProtocolError, pack, unpack_all)
from smp.machine.hangs import Hangs
from smp.machine.inflight import Inflight
from smp.machine.liveness import Liveness
from smp.machine.lockcheck import LockKeyChecker
from smp.machine.locks import Grant, LockError, LockTable
from smp.machine.objects import ObjectError, ObjectStore
from smp.machine.ops import Operations, bad_sample
from smp.machine.peers import Peer, Rejected, opname, short
from smp.machine.publish import Publisher
from smp.machine.sequencer import Sequencer, TimeSpec, ordered
from smp.machine.sites import annotate
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Finding, Witness

POLL_MS = 200
SPIN_S = 0.0005                # machine.server_spin's default: look again for this long

# Which checks run, and their bounds (the config's debug.* keys; all on by default).
DEFAULT_DETECTORS: dict[str, Any] = {"witness": True, "deadlock": True, "lockkeys": True,
                                     "spin_max_s": 5.0, "watchdog_s": 5.0, "liveness_s": 5.0,
                                     "inflight": True}


def detectors_of(config: dict[str, Any]) -> dict[str, Any]:
    """The detectors a run's (flat) config switches on, and their bounds."""
    return {name: config[f"debug.{name}"] for name in DEFAULT_DETECTORS}

_KERNEL_ERRORS = (ObjectError, LockError, Fault)
_MAX_ERROR_TEXT = 400          # an error reply quotes at most this much of the problem
TICK_EVERY = 64                # while draining, look at the clock every this many messages
# pyzmq's flags and options as plain ints: its enum wrappers cost per message
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
# Bounds against a flood (issue 15): the ROUTER's queues per peer, in messages (a CPU
# that is stopped for seconds gets a few heartbeats and events a second: far below), and
# the ERR replies a peer that never said hello gets before it is answered no more.
RCV_HWM = 10_000
SND_HWM = 100_000
NO_HELLO_REPLIES = 256
MAX_STRANGERS = 4096           # identities without hello remembered (the oldest forgotten)


class Server:
    """The shared half of one simulated machine."""

    def __init__(self, endpoint: str, ncpus: int, memory: int, swap: int,
                 pub_endpoint: str | None = None, stats_interval: float = 0.5,
                 detectors: dict[str, Any] | None = None, lines: bool = True,
                 kmem_objects: int | None = None, timespec: TimeSpec | None = None,
                 spin_s: float = SPIN_S) -> None:
        ts = timespec or TimeSpec()
        self.spin_s = spin_s            # machine.server_spin (the module's docstring)
        self.timespec = ts
        self.virtual = ts.virtual
        self.endpoint = endpoint
        self.ncpus = ncpus
        self.cur_t = 0                  # the simulated time of the request being handled
        self.cur_cpu = -1               # ... and its CPU
        self.reply_t = 0                # what its reply says happened when (0: nothing)
        # the devices: physical memory, the swap device, kernel memory
        self.mem = PhysMem(memory)
        self.swap = SwapDevice(swap)
        self.kmem = ObjectStore()
        # kernel memory's bound (machine.kmem_objects): that many objects besides one
        # vm_page per page frame; None: no bound
        self.kmem_objects = kmem_objects
        if kmem_objects is not None:
            self.kmem.limit = kmem_objects + self.mem.npages
        # synchronisation and its detectors
        det = dict(DEFAULT_DETECTORS, **(detectors or {}))
        self.detectors = det
        self.findings: list[dict[str, Any]] = []
        self.policy: dict[str, Any] = {}            # what the kernel registered (POLICY)
        self.witness = Witness(self.finding) if det["witness"] else None
        self.locks = LockTable(self.witness, bool(det["deadlock"]), lines)
        if ts.virtual:       # lock profiling and hold times in simulated time
            self.locks.clock = lambda: self.cur_t / 1000
        self.sleepq = SleepQueues(self.locks)
        self.lockkeys = (LockKeyChecker(self.kmem, self.locks, self.finding)
                         if det["lockkeys"] else None)
        # the liveness detector (smp.machine.hangs): lost wakeups, swap-ins never served,
        # lock starvation
        self.hangs = Hangs(self, float(det["liveness_s"])) if det["liveness_s"] else None
        # invariants in flight (smp.machine.inflight): states that must never coexist,
        # checked at the store that makes them
        self.inflight = (Inflight(self.kmem, self.mem, self.finding, lambda: self.seq.ops)
                         if det["inflight"] else None)
        # the peers and the session
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
        # the parts (module docstring)
        self.seq = Sequencer(self, ts)
        self.locks.thread_name = self.seq.thread_name     # reports name threads
        self.locks.ops = lambda: self.seq.ops             # ... and when a lock was taken
        if self.lockkeys is not None:                     # ... and a lost update
            self.lockkeys.ops = self.locks.ops
        self.live = Liveness(self, float(det["spin_max_s"]), float(det["watchdog_s"]),
                             replay=ts.replay is not None)
        self.publisher = Publisher(self, pub_endpoint, stats_interval)
        self.optable = Operations(self)

    # -- transport ---------------------------------------------------------------------
    def send(self, ident: bytes, msg: list[Any]) -> None:
        assert self.sock is not None
        try:
            self.sock.send(ident, _SNDMORE_NOBLOCK)   # the raw calls: pyzmq's
            self.sock.send(pack(msg), _NOBLOCK)        # send_multipart costs more
        except zmq.ZMQError:
            self.unroutable += 1           # peer gone (ROUTER_MANDATORY) or queue full

    def _reply(self, ident: bytes, seq: int, status: int, value: Any,
               cpu: int = -1) -> None:
        if seq:
            tk = self.seq.tk
            self.send(ident, [Op.REPLY, seq, status, value, self.reply_t, tk.horizon,
                              tk.idle_limit(cpu) if cpu >= 0 else 0])

    def event_cpu(self, cpu: int, event: Event, *args: Any) -> None:
        """An event to a CPU; it carries the time of the request that caused it."""
        peer = self.cpus.get(cpu)
        if peer is not None and not peer.gone:
            self.send(peer.ident, [Op.EVENT, event, *args, self.cur_t])
            self.seq.event_sent(cpu, self.cur_t, event)

    def event_cpu_control(self, cpu: int, event: Event, *args: Any) -> None:
        """A control event to a CPU (the horizon, a replay's stop): of no time."""
        peer = self.cpus.get(cpu)
        if peer is not None and not peer.gone:
            self.send(peer.ident, [Op.EVENT, event, *args, 0])

    def event_launcher(self, event: Event, *args: Any) -> None:
        if self.launcher is not None:
            self.send(self.launcher.ident, [Op.EVENT, event, *args, self.cur_t])

    def send_grants(self, grants: list[Grant]) -> None:
        """The lock operations that hand a lock on (GRANT) or wake a waiter to try again
        (WAKE) notify the waiters' CPUs."""
        observers = self.seq.observers
        for cpu, tid, lock, owned in grants:
            self.event_cpu(cpu, Event.GRANT if owned else Event.WAKE, tid, lock)
            if owned and observers:
                for o in observers:
                    o.granted(cpu, tid, lock, self.cur_t)

    def finding(self, f: Finding) -> None:
        if len(self.findings) < 1000:
            d = f.as_dict()
            d["op"] = self.seq.ops           # the machine's operations so far: --until N
            sources = self.policy.get("sources")
            if sources:                  # the sites of a port also name their C line
                for k in ("summary", "detail"):
                    if isinstance(d.get(k), str):
                        d[k] = annotate(d[k], sources)
            self.findings.append(d)
            if self.seq.tracer is not None:      # smp trace: a mark where it was found
                self.seq.tracer.instant(self.cur_cpu, f"[{d['detector']}] {d['summary']}",
                                        self.cur_t or None)

    # -- the session -------------------------------------------------------------------
    def _hello(self, ident: bytes, seq: int, args: list[Any]) -> None:
        if len(args) < 4 or args[0] != VERSION:
            got = args[0] if args else None
            raise Rejected("version", f"protocol version {short(got)} not supported "
                           f"(this server speaks {VERSION!r})")
        _, role, cpu, pid = args[:4]
        if ident in self.peers:
            raise Rejected("hello", f"identity {short(ident)} already said hello")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 32:
            raise Rejected("hello", f"pid {short(pid)} is not a process id")
        if role == "launcher" and self.launcher is not None and not self.launcher.gone:
            raise Rejected("hello", "this machine already has a launcher")
        if self.hello_check is not None:          # smp.run.remote: keys bound to CPU ids
            why = self.hello_check(self.conn_user, role, cpu)
            if why:
                raise Rejected("hello", why)
        if role == "cpu":
            if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.ncpus:
                raise Rejected("hello", f"cpu id {short(cpu)} out of range "
                               f"0..{self.ncpus - 1}")
            if cpu in self.cpus:
                held = self.cpus[cpu]
                raise Rejected("hello", f"cpu {cpu} is taken: a CPU (pid {held.pid}) "
                               f"said hello as cpu {cpu} already")
            peer = Peer(ident, role, cpu, int(pid))
            self.cpus[cpu] = peer
            self.live.hello(cpu)
        elif role == "launcher":
            peer = Peer(ident, role, -1, int(pid))
            self.launcher = peer
        else:
            raise Rejected("hello", f"unknown role {short(role)}")
        self.peers[ident] = peer
        self.strangers.pop(ident, None)
        # the launcher learns here of a record or trace that cannot be written: no run
        write_failed = self.seq.write_failed if role == "launcher" else None
        self._reply(ident, seq, OK, {"ncpus": self.ncpus, "npages": self.mem.npages,
                                     "swap_blocks": self.swap.nblocks,
                                     "now": time.monotonic(), **self.hello_info,
                                     **({"write_failed": write_failed} if write_failed
                                        else {})})
        if self.started_at is not None and role == "cpu":
            self.event_cpu(cpu, Event.START, self.started_at)
        self._check_started()

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
        self.send(ident, [Op.REPLY, seq, ERR, text[:_MAX_ERROR_TEXT]])

    # -- dispatch ----------------------------------------------------------------------
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
                self.live.pulse(owner.cpu)
                return
        if peer is None and op != Op.HELLO:
            self.reject(ident, seq, "no_hello", f"{opname(op)} from {short(ident)}, which "
                        f"never said HELLO: say HELLO first")
            return
        if self.seq.replay is not None and peer is not None and ordered(peer, op, args):
            self.seq.queue(peer, ident, msg)         # it waits its turn (the record's)
            return
        self.guarded(ident, peer, op, seq, tid, site, t, args)

    def guarded(self, ident: bytes, peer: Peer | None, op: int, seq: int, tid: int,
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
                self.reject(ident, seq, e.kind, f"{opname(op)} refused: {e}")
        except Exception as e:  # noqa: BLE001 - a request must never kill the server
            self.bad_messages += 1
            self.rejected["crash"] += 1
            text = f"bad {opname(op)} request: internal error {type(e).__name__}: {e}"
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
                self.live.heard(peer.cpu)
            if op == Op.BYE:
                peer.gone = True
                if peer.cpu >= 0:
                    self.send_grants(self.locks.drop_lines(peer.cpu,
                                                           hand_on=not self.halting))
                if peer.role == "launcher":
                    self.running = False
                return
            if Op.CTL_START <= op <= Op.CTL_FINAL:
                if peer.role != "launcher":
                    raise ProtocolError("control requests are the launcher's")
                self._control(peer, op, seq, args)
                return
            if op in CONTROL_OPS:
                self.seq.control(peer, op, args)
                self._reply(ident, seq, OK, None)        # (control is posted; a call
                return                                   # of it still gets its answer)
            in_order = ordered(peer, op, args)
            seen = self.seq.request(peer.cpu, op, site, tid, t, args) if in_order else None
            self.cur_t, self.reply_t, self.cur_cpu = t, 0, peer.cpu
            value = self.optable.call(peer, op, tid, site, args)
            if seen is not None and seq:
                seen[6] = (value,)                   # what a dump shows a call answered
            self._reply(ident, seq, OK, value, peer.cpu)
            if in_order and self.seq.observers:     # smp trace, smp replay --watch
                for o in self.seq.observers:
                    o.request(peer.cpu, tid, op, site, t, args, value)
            if self.virtual and self.live.spin_bound_ns:
                self.live.check_spin(peer.cpu, t)
            if self.virtual and self.hangs is not None and t:
                self.hangs.tick()
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
                    f"malformed posted {opname(op)}: {e}"))
            else:
                self._error_reply(ident, seq, f"bad {opname(op)} request: {e}")

    # -- what the launcher and the CPUs tell the machine ---------------------------------
    def _control(self, peer: Peer, op: int, seq: int, args: list[Any]) -> None:
        """The launcher's requests: start, halt, report, dump, the end-of-run check."""
        if op == Op.CTL_START:
            if self.started_at is not None:
                # asked again (the launcher asks every 0.5 s until answered, and a busy
                # host can make the answer later than that): started once, not again
                self._reply(peer.ident, seq, OK, self.started_at)
                return
            self.pending_start.append((peer.ident, seq))
            self._check_started()
        elif op == Op.CTL_HALT:
            self.pending_halt.append((peer.ident, seq))
            reason = str(args[0])
            dead = [int(c) for c in args[1]] if len(args) > 1 else []
            if self.seq.replay is None:
                self.seq.act("halt", [reason, dead])
            elif self.seq.replaying:                # the launcher gives up on the replay
                self.seq.stop(None)
                self.halt(reason, dead)
            for c in dead:
                self.seq.leave(c)
            self._check_halted()
        elif op == Op.CTL_REPORT:
            self._reply(peer.ident, seq, OK, self.publisher.report())
        elif op == Op.CTL_DUMP:
            self._reply(peer.ident, seq, OK, self.publisher.dumpstate())
        elif op == Op.CTL_FINAL:
            if self.seq.replay is None:             # a replay takes it from the record
                self.seq.act("final", None)
            self._reply(peer.ident, seq, OK, None)

    def cpu_report(self, p: Peer, tid: int, site: str, a: list[Any]) -> None:
        """REPORT: a CPU tells the machine about itself (the operation table's entry)."""
        kind, payload = a[0], a[1]
        if kind == "panic":
            self.panic_machine(payload)
        elif kind == "stats":
            why = bad_sample(payload, p.cpu)
            if why is None:
                self.publisher.publish(b"cpu", payload)
            else:                               # dropped and counted, not a panic: the
                self.bad_messages += 1          # stream is the monitors', not the kernel's
                self.rejected["stats"] += 1
        elif kind == "final":
            p.final = payload
            self._check_halted()
            self.seq.check_done()
        elif kind == "reads":                     # a CPU's read log (hw/record.py)
            self.seq.reads(p.cpu, list(payload[0]), int(payload[1]), int(payload[2]))
        elif kind == "checked":                   # a CPU ran its final invariant check
            self.checked.add(p.cpu)
            if self.all_checked():
                self.event_launcher(Event.CHECKED, len(self.checked))
        elif kind == "halt":                      # the kernel asks to stop (shutdown)
            if self.halting is None:
                self.halt(f"halted by cpu {p.cpu}: {payload}", [])
                self.event_launcher(Event.HALT, str(payload))
        else:
            raise ProtocolError(f"unknown report kind {kind!r}")

    # -- panics, the end of a run, halts -------------------------------------------------
    def panic_machine(self, report: dict[str, Any]) -> None:
        """The first panic stops the machine: every CPU is told, then the launcher."""
        if self.panic is not None:
            return
        # the machine's operation at which it panicked (the panicking CPU's REPORT, or the
        # posted request the server refused): where a replay's --until looks from
        self.panic = report = dict(report, op=self.seq.ops)
        if report.get("source") == "server":     # raised here: the thread and time as a
            report.setdefault("thread", self.seq.thread_name(int(report.get("tid") or 0)))
            report.setdefault("sim_time", round(self.cur_t / 1e9, 6))   # CPU's panic has
        if self.seq.tracer is not None:
            msg = str(report.get("message", "")).removeprefix("panic: ")   # (a CPU's has it)
            self.seq.tracer.instant(report.get("cpu", -1), f"panic: {msg}",
                                    self.cur_t or None)
        for cpu in self.cpus:
            # a CPU that panicked itself knows; one whose posted request failed here
            # does not, and is told like the others
            if cpu != report.get("cpu") or report.get("source") == "server":
                self.event_cpu(cpu, Event.PANIC, report.get("cpu", -1),
                               report.get("message", ""))
        self.event_launcher(Event.PANIC, report.get("cpu", -1), report.get("message", ""))

    def _posted_error(self, peer: Peer, tid: int, site: str, op: int, err: Exception) -> None:
        self.panic_machine({
            "message": str(err), "cpu": peer.cpu, "tid": tid, "site": site,
            "source": "server", "op": opname(op),
            "stack": [f"{site}: posted {opname(op)} failed in the server"],
        })

    def final_check(self) -> None:
        """The end-of-run check: every CPU checks the machine's invariants once more,
        within a grace of simulated time past the run's end."""
        self.checked.clear()
        for cpu in self.cpus:
            self.event_cpu(cpu, Event.FINAL)
        self.seq.extend(self.timespec.final_grace_ns)

    def all_checked(self) -> bool:
        """Whether every CPU has run the end-of-run check."""
        return len(self.checked) >= len(self.cpus)

    def halt(self, reason: str, dead: list[int]) -> None:
        self.halting = self.halting or reason
        self.dead.update(dead)
        for cpu in self.cpus:
            if cpu not in self.dead:
                self.event_cpu(cpu, Event.HALT, reason)

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
        self.live.started(t0)
        for cpu in self.cpus:
            self.event_cpu(cpu, Event.START, t0)
        for ident, seq in self.pending_start:
            self._reply(ident, seq, OK, t0)
        self.pending_start.clear()

    # -- the loop ----------------------------------------------------------------------
    def _tick(self, drained: bool = True) -> None:
        """The loop's clock: heartbeats and watches (smp.machine.liveness), the record's
        flush (smp.machine.sequencer), the server's stats sample (smp.machine.publish)."""
        now = time.monotonic()
        self.live.tick(now, drained)
        self.seq.tick(now)
        if not self.virtual and self.hangs is not None and self.started_at is not None:
            self.hangs.tick()
        self.publisher.tick(now)

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
        self.publisher.open(self.ctx)
        ppid = os.getppid()
        sock = self.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        timeout_ms = min(POLL_MS, int(self.publisher.interval * 1000) or POLL_MS)
        spin = self.spin_s
        try:
            while self.running:
                self._tick()
                if not (spin and _spin_poll(poller, spin)) and not poller.poll(timeout_ms):
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
            self.seq.close({"panic": bool(self.panic), "halt": self.halting})
            self.sock.close(0)
            self.publisher.close()
            if self.curve is not None:
                self.curve["teardown"]()
            self.ctx.term()


def _spin_poll(poller: Any, spin_s: float) -> bool:
    """Look at the socket until it is readable or ``spin_s`` has passed, yielding the
    host CPU between looks (the module's docstring says why). True if readable."""
    end = time.perf_counter() + spin_s
    while not poller.poll(0):
        if time.perf_counter() >= end:
            return False
        os.sched_yield()
    return True


def _user_id(frame: Any) -> str | None:
    """The ZAP User-Id of a received frame's connection (CURVE: the client's public key,
    z85), or None (the private endpoint authenticates nobody)."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user if isinstance(user, str) and user else None


def server_main(endpoint: str, ncpus: int, memory: int, swap: int,
                pub_endpoint: str | None = None, stats_interval: float = 0.5,
                detectors: dict[str, Any] | None = None, listen: Any = None,
                hello: dict[str, Any] | None = None, lines: bool = True,
                kmem_objects: int | None = None, timespec: TimeSpec | None = None,
                spin_s: float = SPIN_S) -> None:
    """Entry point of the server process (started by the launcher). ``listen``: an
    ``smp.run.remote.ListenSpec`` when CPUs join from other hosts (it attaches itself to
    the server: the listen endpoint, its keys); ``hello``: what their HELLO replies carry
    (the resolved config)."""
    from smp.machine.proc_util import die_with_parent
    die_with_parent()
    try:
        server = Server(endpoint, ncpus, memory, swap, pub_endpoint, stats_interval,
                        detectors, lines, kmem_objects, timespec, spin_s)
        if listen is not None:
            listen.attach(server, hello or {})
        server.serve()
    except KeyboardInterrupt:
        pass
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise
