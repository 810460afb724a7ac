"""Liveness: every wait in the machine has a bound, and the server watches the ones it can see.

DESIGN.md, "What must always hold": a dead CPU process or a dead server is noticed within
seconds, and ends the run with a message that names it. Three watches, each cheap enough
to run while the server drains a flood (the server's loop calls :meth:`Liveness.tick` every
``TICK_EVERY`` messages, not only when it is idle):

* **Heartbeats** (``smp.hw.protocol.HEARTBEAT_S``, 0.25 s): every CPU gets a ``HEARTBEAT`` event
  that often, so a CPU notices a dead server within 2 s. A CPU that said hello and then
  sends nothing at all for ``PEER_LOST_S`` (its bus PINGs when idle, its heartbeat thread
  PINGs from ``<identity>/hb``) is reported to the launcher as ``STALLED``. Silence is
  judged only when the receive queue has just been drained: while the server itself is
  busy, a CPU's messages wait in the queue unread; and a CPU of this host (the launcher's
  child, as the server is) whose process lives, is not stopped and has not used the
  processor since it fell silent is not lost: the host did not run it (until it has been
  silent for ``PEER_STARVED_S``).
* **The watchdog** (``debug.watchdog_s``): a CPU that made no request for that long is a
  finding, and the launcher is told (``STALLED``); not one that the host did not run, as
  above.
* **Spin locks held too long** (``debug.spin_max_s``): a panic naming the lock, the holder
  and where the lock was taken, and by whom when context switches handed it on since
  (:func:`spin_held_text`). In wall time the lock table is walked every ``LIVENESS_CHECK_S``;
  in virtual time the check runs with each request, in the holder's simulated time
  (:meth:`Liveness.check_spin`), as the wall-time watchdog does in wall time.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import psutil

from smp.hw.bus import lives_unstopped
from smp.hw.protocol import HEARTBEAT_S, PEER_LOST_S, SERVER_STARVED_S, Event, Op
from smp.machine.locks import LockTable
from smp.machine.peers import Peer
from smp.machine.witness import Finding

LIVENESS_CHECK_S = 0.05        # spin locks held too long, silent CPUs: looked for this often
STALL_S = 1.0                  # the loop's looks this far apart: it did not run meanwhile
PEER_STARVED_S = SERVER_STARVED_S   # a silent CPU of this host not run: lost after this
SAMPLE_AFTER_S = 1.0           # a CPU silent this long: what processor time it has used
NOT_RUN_SHARE = 0.05           # used less of the processor than this share: it did not run


class _Server(Protocol):
    """What the watches use of the server (``smp.machine.server.Server``)."""
    cpus: dict[int, Peer]
    dead: set[int]
    locks: LockTable
    virtual: bool
    started_at: float | None
    halting: str | None
    panic: dict[str, Any] | None
    seq: Any                            # the Sequencer: ``ops``, the operations handled

    def send(self, ident: bytes, msg: list[Any]) -> None: ...
    def event_launcher(self, event: Event, *args: Any) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def panic_machine(self, report: dict[str, Any]) -> None: ...


class Liveness:
    """The server's watches over its CPUs and its spin locks."""

    def __init__(self, srv: _Server, spin_max_s: float, watchdog_s: float,
                 replay: bool = False) -> None:
        self.srv = srv
        self.spin_max_s = spin_max_s
        # no watchdog in a replay: there the server itself holds CPUs back (the record's
        # order), and a slow host can make one wait long for its turn
        self.watchdog_s = 0.0 if replay else watchdog_s
        self.spin_reported = False
        self.spin_bound_ns = int(spin_max_s * 1e9)
        self.last_heard: dict[int, float] = {}     # cpu -> its last request
        self.silent: set[int] = set()              # reported by the watchdog
        self.lost: dict[int, float] = {}           # cpu -> seconds silent when reported
        self.alive_at: dict[int, float] = {}       # cpu -> its heartbeat thread's last PING
        self.next_heartbeat = 0.0
        self.next_check = 0.0
        self.heartbeats = 0
        self.last_tick = 0.0                       # when the server's loop last looked
        self.stalls = 0                            # looks STALL_S or more apart
        # a CPU the host does not run (``_starved``): its process, if of this host, and
        # what it had used of the processor when it fell silent
        self.procs: dict[int, psutil.Process | None] = {}
        self.sampled: dict[int, tuple[float, float]] = {}   # cpu -> (when, processor s)
        self.starved: dict[int, int] = {}          # cpu -> its silences excused
        self.starving: set[int] = set()            # (silent now, counted)

    # -- what the server hears ---------------------------------------------------------
    def hello(self, cpu: int) -> None:
        self.last_heard[cpu] = time.monotonic()

    def started(self, now: float) -> None:
        """The machine starts: the watchdog counts each CPU's silence from now. A CPU that
        said hello sends nothing while it waits for the others (its heartbeat thread
        says it lives); before, the first look after a start that a CPU on another host
        had made wait longer than ``debug.watchdog_s`` called the CPUs that waited for
        it silent, and the launcher killed one: the run failed for a late join."""
        for cpu in self.last_heard:
            self.last_heard[cpu] = max(self.last_heard[cpu], now)

    def heard(self, cpu: int) -> None:
        """A request from ``cpu``: it makes progress."""
        self.last_heard[cpu] = time.monotonic()
        self.silent.discard(cpu)

    def pulse(self, cpu: int) -> None:
        """A PING from ``cpu``'s heartbeat thread: the process lives (it may be stopped
        in a long wait, and is then not lost)."""
        self.alive_at[cpu] = time.monotonic()

    # -- the watches -------------------------------------------------------------------
    def tick(self, now: float, drained: bool) -> None:
        gap = now - self.last_tick if self.last_tick else 0.0
        self.last_tick = now
        if gap > STALL_S:
            # the loop did not run for that long (the server starved or stopped, or the
            # whole host stalled): what it did not hear meanwhile is no CPU's silence
            for heard in (self.last_heard, self.alive_at):
                for cpu in heard:
                    heard[cpu] = min(heard[cpu] + gap, now)
            self.stalls += 1
        self.send_heartbeats(now, check_lost=drained)
        if now >= self.next_check:          # it walks every lock: not per message
            self.next_check = now + LIVENESS_CHECK_S
            self.check(now)

    def send_heartbeats(self, now: float, check_lost: bool = True) -> None:
        """Every CPU hears from the server at least every HEARTBEAT_S; a CPU that said
        hello and then sent nothing for PEER_LOST_S is reported to the launcher. Silence
        is judged only when the receive queue has just been drained (``check_lost``):
        while the server itself is busy, a CPU's messages wait in the queue unread."""
        if now < self.next_heartbeat:
            return
        srv = self.srv
        self.next_heartbeat = now + HEARTBEAT_S
        for cpu, peer in srv.cpus.items():
            if peer.gone or peer.final is not None or cpu in srv.dead:
                continue
            srv.send(peer.ident, [Op.EVENT, Event.HEARTBEAT, srv.seq.ops])
            self.heartbeats += 1
            quiet = now - max(self.last_heard.get(cpu, now), self.alive_at.get(cpu, 0.0))
            self._sample(peer, now, quiet)
            if (check_lost and quiet > PEER_LOST_S and cpu not in self.lost
                    and not self._starved(cpu, now, quiet)):
                self.lost[cpu] = round(quiet, 2)
                srv.event_launcher(Event.STALLED, cpu, round(quiet, 1))

    def _starved(self, cpu: int, now: float, quiet: float) -> bool:
        """``cpu`` has sent nothing on either channel (requests, its heartbeat thread) for
        ``quiet`` s: whether the host only did not run it. It did not if the CPU is of this
        host (its process a child of the launcher, whose children the server and its CPUs
        are), lives, is not stopped, and has used next to no processor time (under
        NOT_RUN_SHARE of the time) since it fell silent (:meth:`_sample`); up to
        PEER_STARVED_S of silence. A CPU that used the processor meanwhile and said nothing
        is wedged (its GIL held, say), not starved. Each silence so excused counts once in
        :attr:`starved`. A CPU joined from another host: False."""
        proc, seen = self.procs.get(cpu), self.sampled.get(cpu)
        if proc is None or seen is None or quiet >= PEER_STARVED_S or not lives_unstopped(proc):
            return False
        try:
            used = sum(proc.cpu_times()[:2]) - seen[1]
        except psutil.Error:
            return False
        if used >= NOT_RUN_SHARE * max(now - seen[0], HEARTBEAT_S):
            return False
        if cpu not in self.starving:
            self.starving.add(cpu)
            self.starved[cpu] = self.starved.get(cpu, 0) + 1
        return True

    def _sample(self, peer: Peer, now: float, quiet: float) -> None:
        """Once a CPU has been silent for SAMPLE_AFTER_S, the processor time its process
        had used then (a CPU of this host only), for :meth:`_starved`; forgotten when it
        speaks again."""
        cpu = peer.cpu
        if quiet <= SAMPLE_AFTER_S:
            self.sampled.pop(cpu, None)
            self.starving.discard(cpu)
            return
        if cpu in self.sampled:
            return
        if cpu not in self.procs:
            try:
                proc: psutil.Process | None = psutil.Process(peer.pid)
                if proc.ppid() != os.getppid():
                    proc = None                    # not the launcher's: another host's pid
            except psutil.Error:
                proc = None
            self.procs[cpu] = proc
        proc = self.procs[cpu]
        if proc is not None:
            try:
                self.sampled[cpu] = (now, sum(proc.cpu_times()[:2]))
            except psutil.Error:
                pass

    def check(self, now: float) -> None:
        """Spin locks held too long panic (in wall time; in virtual time the check runs
        with each request, in simulated time); a CPU silent for too long is reported."""
        srv = self.srv
        bound = self.spin_max_s
        if (bound > 0 and not srv.virtual and not self.spin_reported
                and srv.panic is None):
            long_held = srv.locks.spin_held_too_long(bound * 1e6)
            if long_held is not None:
                self._spin_panic(*long_held)
        limit = self.watchdog_s
        if limit > 0 and srv.started_at is not None and srv.halting is None:
            for cpu, last in self.last_heard.items():
                quiet = now - max(last, self.alive_at.get(cpu, 0.0))   # both channels
                if (now - last > limit and cpu not in self.silent and cpu not in srv.dead
                        and not self._starved(cpu, now, quiet)):
                    self.silent.add(cpu)
                    srv.finding(Finding("watchdog", f"watchdog: cpu {cpu} made no progress "
                                        f"for {now - last:.1f} s (no message)", []))
                    srv.event_launcher(Event.STALLED, cpu, round(now - last, 1))

    def check_spin(self, cpu: int, t: int) -> None:
        """Virtual time: a spin lock held longer than ``debug.spin_max_s`` by a thread of
        ``cpu`` (measured in the holder's simulated time ``t``) panics, as the wall-time
        watchdog does in wall time."""
        if self.spin_reported or self.srv.panic is not None:
            return
        long_held = self.srv.locks.spin_held_too_long(self.spin_bound_ns / 1000, cpu=cpu,
                                                      now_us=t / 1000)
        if long_held is not None:
            self._spin_panic(*long_held)

    def _spin_panic(self, lk: Any, us: float) -> None:
        srv = self.srv
        self.spin_reported = True
        msg = spin_held_text(lk, us)
        srv.finding(Finding("spin", msg, [lk.site]))
        owner = srv.locks.threads.get(lk.owner)
        srv.panic_machine({"message": msg, "cpu": owner.cpu if owner else -1,
                           "tid": lk.owner, "site": lk.site, "source": "server",
                           "detector": "spin", "stack": []})


def spin_held_text(lk: Any, us: float) -> str:
    """What a spin lock held ``us`` microseconds too long says: its owner, and where it was
    taken from free; by whom, if context switches have handed it on since (mi_switch
    hands sched_lock to the next thread, which drops it: a chain of handoffs without a
    release is one hold)."""
    taken = f"taken @ {lk.site}"
    if lk.handoffs:
        taken += (f" by thread {lk.taker}, handed on at {lk.handoffs} context "
                  f"switch{'es' if lk.handoffs > 1 else ''} since")
    return f"spin lock {lk.name} held too long: {us / 1e6:.1f} s by thread {lk.owner} ({taken})"


__all__ = ["LIVENESS_CHECK_S", "Liveness", "spin_held_text"]
