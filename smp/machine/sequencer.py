"""The machine's order: when each request may go, and what is written down of it.

The server is the machine's one linearisation point (DESIGN.md decision 11): the order in
which it handles the CPUs' requests *is* the order in which they happened. This module is
the server's part that keeps that order and writes it down; the mechanisms it drives are
apart:

* **virtual time** (``smp/machine/timekeeper.py``, ``hw/clock.py``): every request carries
  its CPU's simulated time, and a CPU that would run more than a quantum ahead of the
  slowest waits for the *horizon*, and an idle CPU for its *idle limit* (no other CPU can
  act before its next tick). Each request and each event moves them; the CPUs they let
  go are told (``HORIZON``, with both), and the launcher is told when every CPU has
  reached the run's end (``END``). A CPU's ``SYNC`` says that it waits; one that has not
  yet read every event sent to it is not waiting, whatever it says.
* **the record** (``smp/machine/schedule.py``, ``hw/record.py``): every request the machine
  orders (:func:`ordered`: everything but control traffic and the goodbye), numbered, and
  every *action* the server takes of its own accord between two requests (the end-of-run
  check, a halt). ``recent`` keeps each CPU's last requests for dumps.
* **a replay** (``smp/machine/schedule.py``): a CPU's request waits in a queue until the
  record says it comes next (:meth:`Sequencer.pump`); the record's actions are taken where
  it has them. The first request that differs, or a CPU that waits for events only later
  requests would bring (``STUCK``), is a *divergence*: the replay stops there, every CPU is
  told (``STOP``), and what was queued is then handled freely so that each can report.
  So does ``--until N``, after operation N.
* **a timeline** (``smp/machine/trace.py``): with ``TimeSpec.trace_path``, every ordered
  request as it is applied, every lock handed to a waiter, and the moments a panic, a
  divergence or a replay's stop happened (``smp trace``).
* **a watch** (``smp/machine/watch.py``): with ``TimeSpec.watch``, every ordered request
  and every lock handed to a waiter that touches a watched object, field or lock, into
  ``watch.txt`` (``smp replay --watch``); like the timeline, called only when attached.

Control traffic (``SYNC``, ``STUCK``, pings, stats samples, read logs) is neither recorded
nor ordered: it changes nothing in the machine.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Protocol

from smp.hw.clock import NEVER
from smp.hw.protocol import CONTROL_OPS, Event, Op
from smp.machine.files import write_error
from smp.machine.locks import LockTable
from smp.machine.objects import ObjectStore
from smp.machine.peers import Peer, opname, short
from smp.machine.schedule import Divergence, Recording, Replay
from smp.machine.timekeeper import TimeKeeper
from smp.machine.trace import Tracer
from smp.machine.watch import Watch

RECENT_OPS = 32          # each CPU's last operations kept for a dump (report.json "recent")
SENT_LAST = 3            # each CPU's last machine events named when a replay stalls
RECORD_FLUSH_S = 1.0     # the record goes to its file at least this often (wall s): a run
#                          that dies leaves a record of all but about its last second


@dataclasses.dataclass
class TimeSpec:
    """How the machine's time runs (``hw/clock.py``), and what of the run is recorded,
    replayed or drawn."""
    virtual: bool = False
    quantum_ns: int = 1_000_000
    end_ns: int = NEVER                 # the run's simulated end (virtual time)
    final_grace_ns: int = 500_000_000   # the end-of-run check runs within this much more
    record_path: str | None = None
    record_header: dict[str, Any] = dataclasses.field(default_factory=dict)
    replay: Replay | None = None
    trace_path: str | None = None       # a timeline of the run (smp/machine/trace.py)
    watch: tuple[str, ...] = ()         # what to watch (smp/machine/watch.py) ...
    watch_path: str | None = None       # ... into this file


def ordered(peer: Peer, op: int, args: list[Any]) -> bool:
    """Whether a request is part of the machine's order (recorded, replayed): a CPU's,
    before its final report (what it sends after, giving back its lines as it closes,
    changes nothing the run did), and not control traffic (hw/protocol.py: CONTROL_OPS,
    stats samples, read logs) or the goodbye."""
    if peer.role != "cpu" or peer.final is not None or op in CONTROL_OPS or op == Op.BYE:
        return False
    return not (op == Op.REPORT and args and args[0] in ("stats", "reads"))


class _Name(str):
    """A name in a dump's arguments, shown as it is (``proc#460``, not ``'proc#460'``)."""

    def __repr__(self) -> str:
        return str(self)


# what a dump names in an operation's arguments: the object (first argument a handle),
# the field address (a list, a lock, a channel), the element of a list; the answer that
# is an object
_ON_OBJECT = frozenset({Op.FREE, Op.LOAD, Op.LOADN, Op.STORE, Op.STOREN, Op.ADD, Op.CAS,
                        Op.SETBITS, Op.CLRBITS, Op.ADDP, Op.LOADR, Op.STORER})
_ON_ADDRESS = frozenset({Op.LIST_INSERT_HEAD, Op.LIST_INSERT_TAIL, Op.LIST_REMOVE,
                         Op.LIST_FIRST, Op.LIST_NEXT, Op.LIST_ITEMS, Op.LIST_LEN,
                         Op.LIST_SEARCH, Op.MAP_GET, Op.MAP_SET, Op.MAP_DEL, Op.LOCK_INIT,
                         Op.LOCK_DESTROY, Op.ACQUIRE, Op.RELEASE, Op.HANDOFF, Op.SLEEP,
                         Op.WAKEUP, Op.UNSLEEP, Op.RELINQUISH})
_ELEMENT = frozenset({Op.LIST_INSERT_HEAD, Op.LIST_INSERT_TAIL, Op.LIST_REMOVE,
                      Op.LIST_NEXT})
_GIVE_OBJECT = frozenset({Op.NEW, Op.LOOKUP, Op.LIST_FIRST, Op.LIST_NEXT})


def _named(kmem: ObjectStore, op: int, args: list[Any]) -> list[Any]:
    """An operation's arguments as a dump shows them: objects and field addresses by
    name (``[proc#460, 'p_flag']``, ``[&proc#609.p_threads]``), the rest as they are."""
    if not args or not isinstance(args[0], int) or isinstance(args[0], bool):
        return args
    out = list(args)
    if op in _ON_OBJECT:
        out[0] = _Name(kmem.name(args[0]))
    elif op in _ON_ADDRESS:
        out[0] = _Name(kmem.describe(args[0]))
        if op in _ELEMENT and len(args) > 1 and isinstance(args[1], int):
            out[1] = _Name(kmem.name(args[1]))
    return out


class _Server(Protocol):
    """What the sequencer uses of the server (``smp.machine.server.Server``)."""
    ncpus: int
    locks: LockTable
    peers: dict[bytes, Peer]
    cpus: dict[int, Peer]
    dead: set[int]
    kmem: ObjectStore                  # (a trace's names of threads and channels)
    policy: dict[str, Any]
    cur_t: int                         # the time of the request being handled (0: none)

    def event_cpu_control(self, cpu: int, event: Event, *args: Any) -> None: ...
    def event_launcher(self, event: Event, *args: Any) -> None: ...
    def guarded(self, ident: bytes, peer: Peer | None, op: int, seq: int, tid: int,
                site: str, t: int, args: list[Any]) -> None: ...
    def final_check(self) -> None: ...
    def all_checked(self) -> bool: ...
    def halt(self, reason: str, dead: list[int]) -> None: ...


class Sequencer:
    """The order of one machine's requests: virtual time, the record, a replay, a trace."""

    def __init__(self, srv: _Server, ts: TimeSpec) -> None:
        self.srv = srv
        self.timespec = ts
        self.tk = TimeKeeper(srv.ncpus, ts.quantum_ns, ts.end_ns,
                             ts.virtual and ts.replay is None)
        self.rec: Recording | None = None
        self.record_error: str | None = None
        self.flush_at = 0.0                 # when the record next goes to its file
        if ts.record_path and ts.replay is None:
            try:
                self.rec = Recording(ts.record_path, ts.record_header, self._give_up)
            except OSError as e:
                self.record_error = write_error(ts.record_path, e)
        self.tracer: Tracer | None = None
        self.trace_error: str | None = None
        if ts.trace_path:
            try:
                self.tracer = Tracer(ts.trace_path, srv.ncpus, srv.locks.names,
                                     failed=self._give_up, thread_name=self.thread_name,
                                     channel=srv.kmem.channel)
            except OSError as e:
                self.trace_error = write_error(ts.trace_path, e)
        self.watch: Watch | None = None
        self.watch_error: str | None = None
        if ts.watch and ts.watch_path:
            tracer = self.tracer
            try:
                self.watch = Watch(ts.watch_path, list(ts.watch), srv.kmem, srv.locks.names,
                                   lambda: self.ops, thread_name=self.thread_name,
                                   sources=lambda: srv.policy.get("sources"),
                                   mark=tracer.mark if tracer is not None else None,
                                   failed=self._give_up)
            except OSError as e:
                self.watch_error = write_error(ts.watch_path, e)
        # what the server tells of every ordered request and every lock handed to a
        # waiter: none, in a run without a timeline or a watch (one test per request)
        self.observers: tuple[Tracer | Watch, ...] = tuple(
            o for o in (self.tracer, self.watch) if o is not None)
        self.replay = ts.replay
        self.replay_done = False
        self.end_told: int | None = None     # the end the launcher was told of
        self.grace_left = 0                  # the end-of-run check's grace not yet given
        self.sent = [0] * srv.ncpus          # machine events sent to each CPU
        # ... the last few: (event, the operation that sent it), for a replay that stalls
        self.sent_last: dict[int, collections.deque[tuple[Event, int]]] = \
            collections.defaultdict(lambda: collections.deque(maxlen=SENT_LAST))
        self.ops = 0                         # the machine's operations handled so far
        # each CPU's last requests: what a dump shows as "touched last"
        self.recent: dict[int, collections.deque[list[Any]]] = \
            collections.defaultdict(lambda: collections.deque(maxlen=RECENT_OPS))

    def thread_name(self, tid: int) -> str:
        """A thread's name, from the field the kernel registered for it (a thread's id
        is its object's handle); "" while it has none."""
        field = (self.srv.policy.get("liveness") or {}).get("name")
        obj = self.srv.kmem.objs.get(tid) if field else None
        return str(obj.get(field) or "") if obj is not None else ""

    def recent_ops(self) -> dict[str, list[tuple[Any, ...]]]:
        """Each CPU's last requests, as a dump shows them (formatted only now: the
        server keeps them at every request): number, operation, site, thread, simulated
        ns, arguments, and the value a call was answered with ("" for a post, which
        waits for none)."""
        kmem = self.srv.kmem
        return {str(c): [(n, opname(op), site, tid, t, short(_named(kmem, op, args)),
                          "" if answer is None else
                          short(_Name(kmem.name(answer[0])) if op in _GIVE_OBJECT
                                and answer[0] else answer[0]))
                         for n, op, site, tid, t, args, answer in q]
                for c, q in sorted(self.recent.items())}

    @property
    def _record_failed(self) -> str | None:
        """Why the record could not be begun, or was given up midway."""
        return self.record_error or (self.rec.error if self.rec else None)

    @property
    def _trace_failed(self) -> str | None:
        """Why the timeline could not be begun, or was given up midway."""
        return self.trace_error or (self.tracer.error if self.tracer else None)

    @property
    def _watch_failed(self) -> str | None:
        """Why the watch's file could not be begun, or was given up midway."""
        return self.watch_error or (self.watch.error if self.watch else None)

    @property
    def write_failed(self) -> str | None:
        """Why the record, the timeline or the watch could not be written, if one could
        not."""
        return self._record_failed or self._trace_failed or self._watch_failed

    def _give_up(self, error: str) -> None:
        """The record or the timeline could not be written (a full disk): the launcher
        stops the run, saying so (it was an internal error of whatever request was being
        handled, which the kernel took for a fatal trap)."""
        self.srv.event_launcher(Event.WRITE_FAILED, error)

    @property
    def replaying(self) -> bool:
        """A replay that still enforces the record's order."""
        return self.replay is not None and not self.replay.stopped

    # -- virtual time ------------------------------------------------------------------
    def horizon_to(self, cpus: list[int]) -> None:
        """Tell the CPUs that wait for it how far they may run now; tell the launcher when
        every CPU has reached the run's end, unless the end-of-run check has not yet run
        everywhere and grace is left: the end is then lifted another quantum
        (:meth:`extend`)."""
        srv = self.srv
        tk = self.tk
        while True:
            for cpu in cpus:
                srv.event_cpu_control(cpu, Event.HORIZON, tk.horizon, tk.idle_limit(cpu))
            if not tk.ended or self.end_told == tk.ended_at:
                return
            if self.grace_left > 0 and not srv.all_checked():
                # the end-of-run check is not done: a quantum more (at most the grace)
                step = min(tk.quantum, self.grace_left)
                self.grace_left -= step
                cpus = tk.extend(step)
                continue
            self.end_told = tk.ended_at
            srv.event_launcher(Event.END, tk.ended_at)
            return

    def event_sent(self, cpu: int, t: int, event: Event) -> None:
        """A machine event went to ``cpu``, made at simulated time ``t``: a waiting CPU
        runs again at that time; in a replay, what it waited for may be this."""
        self.sent[cpu] += 1
        self.sent_last[cpu].append((event, self.ops))
        if self.tk.enabled:
            self.horizon_to(self.tk.wake(cpu, t))
        if self.replay is not None:
            self.replay.stuck.pop(cpu, None)

    def extend(self, ns: int) -> None:
        """Give the end-of-run check up to ``ns`` of simulated time past the run's end: the
        end is lifted a quantum at a time, and the machine ends again at the first of them
        that every CPU reaches having checked (:meth:`horizon_to`). Where that is depends
        only on what the CPUs did before it (each says it checked before it waits past
        the end), not on the host; a replay follows its record instead."""
        step = min(self.tk.quantum, ns)
        self.grace_left = ns - step
        self.horizon_to(self.tk.extend(step))

    def leave(self, cpu: int) -> None:
        """A dead CPU no longer holds the others back."""
        self.horizon_to(self.tk.leave(cpu))

    def control(self, p: Peer, op: int, a: list[Any]) -> None:
        """Control traffic: time synchronisation (SYNC) and a replay's waits (STUCK)."""
        if op == Op.SYNC:
            # a CPU that has not yet read every event sent to it will act on them: it is
            # not waiting, whatever it says (its SYNC crossed an event)
            if p.cpu >= 0 and int(a[2]) >= self.sent[p.cpu]:
                self.horizon_to(self.tk.sync(p.cpu, int(a[0]), int(a[1])))
        elif op == Op.STUCK:
            if p.cpu >= 0 and self.replaying:
                assert self.replay is not None
                if int(a[1]) < 0:               # the record, cut short, ends for it here
                    self._diverge(self.replay.reads_end(p.cpu, int(a[0])))
                    return
                if len(a) > 3 and int(a[3]) < self.sent[p.cpu]:
                    return                      # what it waits for is on its way to it
                self.replay.stuck[p.cpu] = (int(a[0]), int(a[1]), int(a[2]))
                self.pump()

    # -- the order -----------------------------------------------------------------------
    def request(self, cpu: int, op: int, site: str, tid: int, t: int,
                args: list[Any]) -> list[Any] | None:
        """An ordered request of ``cpu`` is about to be applied: it gets its number, is
        remembered and recorded, and moves its CPU's time. Returns what is remembered
        of it, whose last item the server sets to ``(value,)`` when it answers a call."""
        if self.replay is not None and self.replay.stopped:
            return None                     # a stopped replay's final reports: no number
        self.ops += 1                       # the operation's number (hw/record.py)
        seen = [self.ops, op, site, tid, t, args, None]
        self.recent[cpu].append(seen)       # (see recent_ops)
        if self.rec is not None:
            self.rec.request(cpu, op, site, tid)
        if self.tk.enabled:
            self.horizon_to(self.tk.request(cpu, t))
        return seen

    def reads(self, cpu: int, entries: list[int], last: int, upto: int) -> None:
        """A CPU's read log (hw/record.py): recorded with the order."""
        if self.rec is not None:
            self.rec.reads(cpu, entries, last, upto)

    def act(self, kind: str, payload: Any) -> None:
        """Something the server does of its own accord, between two requests: recorded,
        and replayed from the record. Its events carry no request's time (the CPUs' clocks
        stay where they are): a replay takes it just after a request, whose time the
        server still holds, and the CPUs' clocks would jump to it."""
        self.srv.cur_t = 0
        if self.rec is not None:
            self.rec.action(kind, payload)
        if kind == "final":
            self.srv.final_check()
        elif kind == "halt":
            self.srv.halt(str(payload[0]), [int(c) for c in payload[1]])

    # -- a replay ------------------------------------------------------------------------
    def queue(self, p: Peer, ident: bytes, msg: list[Any]) -> None:
        """A replay: the request waits its turn (the record's order). Once the replay
        has stopped, nothing but the CPUs' final reports is handled: the machine stays as
        it was after the last operation replayed (a CPU that has not yet read its STOP
        stops at its next wait)."""
        assert self.replay is not None
        if self.replay.stopped:
            self._after_stop(ident, msg)
            return
        self.replay.queues[p.cpu].append((ident, msg))
        self.replay.stuck.pop(p.cpu, None)
        self.pump()

    def pump(self) -> None:
        """A replay: handle the queued requests in the record's order, as far as they
        have come; take the record's actions where it has them."""
        rp = self.replay
        assert rp is not None
        srv = self.srv
        while not rp.stopped:
            for kind, payload in rp.actions_due():
                self.act(kind, payload)
            exp = rp.expected()
            if exp is None:
                leftover = next(((c, q[0]) for c, q in rp.queues.items() if q), None)
                if leftover is not None:
                    cpu, (_, msg) = leftover
                    self._diverge(rp.check(cpu, msg))
                break
            q = rp.queues.get(exp[0])
            if not q:
                div = rp.stalled(self.sent_note)
                if div is not None:
                    self._diverge(div)
                break
            ident, msg = q[0]
            div = rp.check(exp[0], msg)
            if div is not None:
                self._diverge(div)
                break
            q.popleft()
            srv.guarded(ident, srv.peers.get(ident), msg[0], msg[1], msg[2], msg[3],
                        msg[4], msg[5:])
            rp.i += 1
            if rp.until and rp.i >= rp.until:
                self.stop(None)
                break
        self.check_done()

    def sent_note(self, cpu: int) -> str:
        """What the server sent ``cpu``, for a replay that stalls: a CPU that waits for an
        event more than it was sent at a read point has had all it was sent."""
        last = ", ".join(f"{e.name} at operation {op}"
                         for e, op in self.sent_last.get(cpu, ()))
        return (f"; it has had every one of the {self.sent[cpu]} machine events sent to it"
                + (f", the last {last}" if last else ""))

    def _diverge(self, div: Divergence | None) -> None:
        if div is not None and self.replaying:
            self.stop(div)

    def stop(self, div: Divergence | None) -> None:
        """The replay ends here (its --until, a divergence, or the launcher gives up):
        every CPU stops where it is; what was queued is never handled (see queue)."""
        rp = self.replay
        assert rp is not None
        srv = self.srv
        rp.stopped = True
        rp.divergence = div
        why = div.message if div else f"replay stopped after operation {rp.i}"
        if self.tracer is not None:
            self.tracer.instant(div.cpu if div else -1, why)
        for cpu in srv.cpus:
            srv.event_cpu_control(cpu, Event.STOP, why)
        for q in rp.queues.values():
            while q:
                self._after_stop(*q.popleft())
        self.check_done()

    def _after_stop(self, ident: bytes, msg: list[Any]) -> None:
        """A request that comes (or waited its turn) when the replay has stopped: a CPU's
        final report is handled (the CPU waits for its reply, and the report needs it);
        anything else is dropped and counted."""
        assert self.replay is not None
        if msg[0] == Op.REPORT and len(msg) > 5 and msg[5] == "final":
            self.srv.guarded(ident, self.srv.peers.get(ident), msg[0], msg[1], msg[2], msg[3],
                             msg[4], msg[5:])
        else:
            self.replay.after_stop += 1

    def check_done(self) -> None:
        """Tell the launcher once the replay has ended and every CPU has reported."""
        rp = self.replay
        if rp is None or self.replay_done:
            return
        if not rp.stopped and rp.expected() is not None:
            return
        srv = self.srv
        if any(p.final is None and c not in srv.dead for c, p in srv.cpus.items()):
            return
        self.replay_done = True
        if rp.divergence is not None:
            srv.event_launcher(Event.DONE, False, rp.divergence.message)
        elif rp.stopped:
            srv.event_launcher(Event.DONE, True, f"stopped after operation {rp.i}")
        else:
            srv.event_launcher(Event.DONE, True, f"replayed {rp.i} operations")

    # -- what was written down -----------------------------------------------------------
    def tick(self, now: float) -> None:
        """The server's clock: the record is flushed every RECORD_FLUSH_S."""
        if self.rec is not None and now >= self.flush_at:
            self.flush_at = now + RECORD_FLUSH_S
            self.rec.flush()

    def close(self, totals: dict[str, Any]) -> None:
        """The end of the run: the record's last totals, the timeline's last slices."""
        if self.rec is not None:
            self.rec.close(totals)
        if self.tracer is not None:
            self.tracer.close()
        if self.watch is not None:
            self.watch.close()

    def report(self) -> dict[str, Any]:
        """What was recorded, or how the replay went; what was traced."""
        out: dict[str, Any] = {"time": "virtual" if self.timespec.virtual else "wall",
                               "sync": self.tk.statistics() if self.tk.enabled else {}}
        if self.rec is not None:
            self.rec.flush()
            out["record"] = {"path": self.rec.path, "operations": self.rec.requests}
        if self._record_failed:
            out["record_error"] = self._record_failed
        rp = self.replay
        if rp is not None:
            out["replay"] = {"operations": rp.i, "recorded": rp.total,
                             "until": rp.until or None,
                             "divergence": rp.divergence.as_dict() if rp.divergence else None,
                             "damage": rp.rec.damage, "after_stop": rp.after_stop}
        if self.tracer is not None:
            self.tracer.flush()
            out["trace"] = {"path": self.timespec.trace_path, **self.tracer.statistics()}
        if self._trace_failed:
            out["trace_error"] = self._trace_failed
        if self.watch is not None:
            self.watch.flush()
            out["watch"] = self.watch.statistics()
        if self._watch_failed:
            out["watch_error"] = self._watch_failed
        return out


__all__ = ["Sequencer", "TimeSpec", "ordered"]
