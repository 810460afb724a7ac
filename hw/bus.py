"""The CPU's side of the bus: one DEALER socket to the machine server.

Two ways to issue a request (DESIGN.md decision 10):

* :meth:`Bus.call` waits for the reply: loads, acquires, trylocks, atomics that return a
  value. The CPU is stalled meanwhile, as a real CPU on a memory access.
* :meth:`Bus.post` does not: stores, releases, wakeups' follow-ups. The channel is FIFO,
  so the server still applies them in program order. Posted requests are queued, like a
  CPU's store buffer, and leave in one frame with the next call (ahead of it), before the
  CPU waits for anything or looks at its channel, or when POST_BATCH have queued: a
  release costs no message of its own, and a CPU never waits while holding back a request
  another CPU may need.

Every request carries the simulated thread (``tid``), the kernel source site and the CPU's
simulated time (``now_ns``, set by the CPU).

**Lines.** A lock word lives in a cache line, and on real hardware the CPU that keeps
taking a lock keeps that line: taking the lock again costs nothing, while another CPU must
first get the line over. The bus does the same. When the server grants a mutex with
``GRANTED_LINE`` (this CPU has taken it several times running and nobody waits), the bus
keeps the line: the next acquire of that lock while no thread of this CPU holds it is
*posted* (``AF_LINE``) and returns at once; the server, which gives the lock to no other
CPU while the line is here, records the grant in order, so every detector still sees every
acquisition. Another CPU's acquire makes the server send ``RECALL``; the bus gives the line
back (``RELINQUISH``) as soon as no thread of this CPU holds the lock, and the waiter gets
its turn. The CPU and the kernel above never see lines, only GRANTED.

**Events and read points.** Asynchronous events (grants, IPIs, start, halt) can arrive at
any time; the bus queues them in :attr:`Bus.events` for the CPU to take at its next
interrupt point. The bus reads its channel in two ways: while it waits for a reply (it
then reads exactly what the server sent before the reply), and at a *read point*
(:meth:`Bus.read_point`), the only other way. Read points are numbered in the order the
CPU reaches them; with a recorder the bus logs how many machine messages it read at each
(``hw/record.py``), and with a replay log it reads exactly that many there, so that the
CPU takes every event at the same place of its execution as in the recorded run.

Liveness, both ways (``smp.hw.protocol.HEARTBEAT_S``): the server sends every CPU a
``HEARTBEAT`` event every HEARTBEAT_S (0.25 s), which the bus swallows; every wait here raises
:class:`ServerGone` after ``silence`` seconds (``SERVER_SILENCE_S``, 1.25 s) in which
*nothing* came from the server and one more look of LATE_GRACE_S (0.5 s) found nothing
either, so a killed server is noticed within 2 s by every CPU, even one on another host.
A CPU on the server's host (``server_pid``: the launcher's CPUs) then looks at the server's
process: one that lives and is not stopped is starved by the host or busy, not dead, and is
waited for up to ``SERVER_STARVED_S`` of silence (:meth:`Bus._server_starved`); a killed
server (a zombie until the launcher reaps it, or gone) or a stopped one is still noticed in 2 s.
The last look is for what ZeroMQ's I/O thread has not handed over yet when this process
was not listening (stopped with SIGSTOP, or starved by the host: the I/O thread stops
with it; :meth:`Bus._last_look`), so a CPU paused for less than the server's PEER_LOST_S
runs on. Nor does the silence count while this process did not run: a wait that ends
``STALL_S`` or more later than asked (a process starved or stopped, or a whole host that
stalled, server and all: two machines on a host at load 14 lost their servers in the same
second, "nothing from the server in 2.29 s") moves the silence's start on by as much.
In the other direction, a bus that has sent nothing for ``HEARTBEAT_S`` posts a ``PING``
whenever it waits, so the server can tell a quiet CPU from a dead or stopped one.
A call also gives up after ``liveness`` seconds without its reply (the server is alive but
does not answer: a server bug); in a replay, after ``liveness`` seconds without its reply in
which the machine handled no operation (the heartbeats say how many it has handled): a
replayed request waits its turn, and on a busy host the other CPUs may take longer than
that to make the operations before it.

Every request carries the simulated thread (``tid``) and the kernel source site.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Protocol

import psutil
import zmq

from smp.hw.clock import NEVER
from smp.hw.protocol import (AF_LINE, CONTROL_EVENTS, ERR, EXCL, GRANTED, GRANTED_LINE,
                             HEARTBEAT_S, LIVENESS_S, MAX_BATCH, SERVER_SILENCE_S,
                             SERVER_STARVED_S, VERSION, Event, Op, pack, unpack)

# Posted requests queue up to this many before they are sent without waiting for a call.
POST_BATCH = min(64, MAX_BATCH - 1)
STUCK_S = 1.0          # a replay read waiting this long tells the server (it may diverge)
READ_LOG_S = 1.0       # a recording CPU sends its read log at least this often (wall s)
# Before a bus takes the silent server for dead it looks once more, this long, for what
# may still be on its way (its own process stopped or starved, ZeroMQ's I/O thread with it).
LATE_GRACE_S = 2 * HEARTBEAT_S
# A wait for the server that ends this much later than asked was not a wait: this process
# did not run meanwhile (starved by the host, stopped, or the whole host stalled, the
# server with it), and the server's silence is not counted over that time.
STALL_S = HEARTBEAT_S


class Channel(Protocol):
    """What the bus needs of its connection: a ZeroMQ DEALER socket and its poller, or
    (``channel=``) one object that stands for both, for a server in the same process."""

    def send(self, frame: bytes) -> None: ...
    def recv(self) -> bytes: ...
    def poll(self, timeout_ms: int) -> Any: ...
    def close(self, linger_ms: int = 0) -> None: ...


class BusError(Exception):
    """The server refused a request (the text says why); the kernel panics on it."""


class ServerGone(Exception):
    """The server stopped answering: the machine is dead."""


class Stopped(Exception):
    """The server said STOP (a replay's end point): stop where you are."""


def _zero() -> int:
    return 0


def lives_unstopped(proc: psutil.Process) -> bool:
    """Whether a process of this host (the server, for a CPU; a CPU, for the server) lives
    and is not stopped: silent, it is starved by the host or busy, not dead. A zombie,
    a process gone (or another in its pid), a stopped or traced one: False."""
    try:
        return proc.is_running() and proc.status() not in (
            psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, psutil.STATUS_STOPPED,
            psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


class Bus:
    def __init__(self, endpoint: str, identity: str, liveness: float = LIVENESS_S,
                 silence: float = SERVER_SILENCE_S, curve: dict[str, bytes] | None = None,
                 lines: bool = True, channel: Channel | None = None,
                 server_pid: int | None = None) -> None:
        self.ctx: zmq.Context[Any] | None = None
        self.sock: Any
        self.poller: Any
        if channel is not None:    # a machine in this very process (smp.machine.local)
            self.sock = self.poller = channel
        else:
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.IDENTITY, identity.encode())   # before connect
            self.sock.setsockopt(zmq.SNDHWM, 0)
            self.sock.setsockopt(zmq.RCVHWM, 0)
            if curve:              # CURVE client: our key pair and the server's public key
                self.sock.curve_secretkey = curve["secret"]
                self.sock.curve_publickey = curve["public"]
                self.sock.curve_serverkey = curve["server"]
            self.sock.connect(endpoint)
            self.poller = zmq.Poller()          # one for good: Socket.poll makes one a call
            self.poller.register(self.sock, zmq.POLLIN)
        self.endpoint = endpoint
        self.identity = identity
        self.curve = curve
        self.beat: tuple[threading.Thread, threading.Event] | None = None
        self.liveness = liveness
        self.silence = silence
        self.seq = 0
        self.events: collections.deque[list[Any]] = collections.deque()
        self.calls = 0
        self.posts = 0
        self.frames = 0                        # frames sent: calls, flushes, pings
        self.pending: list[bytes] = []         # posted requests not yet sent
        self.use_lines = lines
        self.lines: dict[Any, list[int]] = {}  # lock -> [holds by our threads, recalled]
        self.line_hits = 0                     # acquires taken on the strength of a line
        self.pings = 0
        self.wait_s = 0.0
        self.closed = False
        self.last_rx = time.monotonic()        # the last message from the server
        self.last_tx = self.last_rx            # our last message to it
        # our time.monotonic() minus the server's: 0 on the server's host; set for a CPU
        # on another host, whose START time is mapped onto its own clock (hw.clock)
        self.clock_offset = 0.0
        # simulated time: what requests are stamped with (the CPU sets it), the time the
        # last reply carried, the horizon the server last gave (virtual time) and the
        # idle limit: how far the CPU may jump while idle, valid until it sends a request
        self.now_ns: Callable[[], int] = _zero
        self.reply_t = 0
        self.horizon = NEVER
        self.idle_limit = 0
        # read points: record (a log of [point delta, count]) or replay ({point: count})
        self.point = 0
        self.read_log: list[int] | None = None
        self._logged_point = 0
        self._ship_at = 0.0                    # when the read log next goes out at the latest
        self.replay: dict[int, int] | None = None
        self.replay_limit: int | None = None   # the record's reads end here (cut short)
        self.on_read_log: Callable[[list[int]], None] = lambda log: None
        self.stopped: str | None = None        # a STOP came: why
        self.new = 0                           # machine messages read at the last read point
        self.received = 0                      # machine messages read in all
        self.point_wait_s = 0.0                # host s spent waiting at read points
        self.stalls = 0                        # waits that ended STALL_S late or more
        # the server's process, if it runs on this host: a silent one that lives is waited for
        self.server: psutil.Process | None = None
        if server_pid is not None:
            try:
                self.server = psutil.Process(server_pid)
            except psutil.Error:
                pass                           # gone already: its silence will say so
        self.server_waits = 0                  # silences of a live server waited out
        self._waited_at = 0.0                  # (last_rx when the last one was counted)

    def hello(self, role: str, cpu: int, pid: int) -> Any:
        # the server may still be starting: the first answer gets the longer bound
        return self._call(Op.HELLO, 0, "", (VERSION, role, cpu, pid), self.liveness)

    def post(self, op: int, tid: int, site: str, *args: Any, now: bool = False) -> None:
        """Queue a request that needs no reply; it leaves with the next call, before the
        next wait, or at once with ``now`` (or once POST_BATCH are queued)."""
        self.posts += 1
        self.idle_limit = 0                     # it may wake a CPU at an earlier time
        self.pending.append(pack([op, 0, tid, site, self.now_ns(), *args]))
        if self.lines and (op == Op.RELEASE or op == Op.SLEEP):
            self._line_release(tid, args[0] if op == Op.RELEASE else args[1])
        if now or len(self.pending) >= POST_BATCH:
            self.flush()

    def send_control(self, op: int, *args: Any) -> None:
        """A control message (stats, time synchronisation): sent at once, on its own, not
        counted among the machine's requests and changing none of their order."""
        self.sock.send(pack([op, 0, 0, "", self.now_ns(), *args]))
        self.frames += 1
        self.last_tx = time.monotonic()

    # -- lines: the lock word's cache line, kept by the CPU that keeps taking the lock ----
    def _line_acquire(self, tid: int, site: str, args: tuple[Any, ...]) -> bool:
        """Take an exclusive lock on the strength of our line, if we have it and no thread
        of ours holds the lock: the ACQUIRE is posted (AF_LINE) and the server, which
        lets no other CPU take a lock while our line stands, records the grant."""
        ln = self.lines.get(args[0])
        if ln is None or ln[0] or ln[1] or args[1] != EXCL:
            return False
        self.read_point()                       # a RECALL may be waiting
        ln = self.lines.get(args[0])
        if ln is None or ln[0] or ln[1]:
            return False
        ln[0] = 1
        self.line_hits += 1
        self.post(Op.ACQUIRE, tid, site, args[0], EXCL, int(args[2]) | AF_LINE)
        return True

    def _line_release(self, tid: int, lock: Any) -> None:
        ln = self.lines.get(lock)
        if ln is not None and ln[0] > 0:
            ln[0] -= 1
            if ln[0] == 0 and ln[1]:            # recalled while we held it: give it back
                self._relinquish(lock)

    def _relinquish(self, lock: Any, now: bool = True) -> None:
        del self.lines[lock]
        self.post(Op.RELINQUISH, 0, "", lock, now=now)

    def _recall(self, lock: Any) -> None:
        """The server wants ``lock``'s line for another CPU: give it back now if no
        thread of ours holds the lock, else when the last one lets go."""
        ln = self.lines.get(lock)
        if ln is None:
            return
        if ln[0]:
            ln[1] = 1
        else:
            self._relinquish(lock)

    def give_back_lines(self) -> None:
        """Give back every line no thread of ours holds, and send what is queued: for a
        CPU about to stop listening to the bus (closing, or waiting on something else),
        which would not hear a RECALL."""
        for lock, ln in list(self.lines.items()):
            if not ln[0]:
                self._relinquish(lock, now=False)
        self.flush()

    def flush(self) -> None:
        """Send the queued posted requests, in order, as one frame."""
        if self.pending:
            frame = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending.clear()
            self.sock.send(frame)
            self.frames += 1
            self.last_tx = time.monotonic()

    def call(self, op: int, tid: int, site: str, *args: Any) -> Any:
        if op == Op.ACQUIRE and self.lines and self._line_acquire(tid, site, args):
            self.reply_t = 0
            return GRANTED
        value = self._call(op, tid, site, args, self.silence)
        if op == Op.ACQUIRE:
            if value == GRANTED_LINE:
                if self.use_lines:
                    self.lines[args[0]] = [1, 0]    # [holds by our threads, recalled]
                else:                               # (measurements: every acquire asks)
                    self.post(Op.RELINQUISH, 0, "", args[0])
                return GRANTED
            if value == GRANTED and args[0] in self.lines:
                self.lines[args[0]][0] += 1
        return value

    def _call(self, op: int, tid: int, site: str, args: tuple[Any, ...],
              silence: float) -> Any:
        # a stopped replay still answers a CPU's final report: wait for that reply
        final = op == Op.REPORT and bool(args) and args[0] == "final"
        self.seq += 1
        seq = self.seq
        self.calls += 1
        t = time.perf_counter()
        frame = pack([op, seq, tid, site, self.now_ns(), *args])
        self.idle_limit = 0                    # (as in post; the reply brings a new one)
        if self.pending:                       # the queued posts go first, in one frame
            self.pending.append(frame)
            frame = b"".join(self.pending)
            self.pending.clear()
        self.sock.send(frame)
        self.frames += 1
        self.last_tx = start = time.monotonic()
        ops = -1                               # the machine's operations, at a heartbeat
        while True:
            # silence counts from the server's last message, not from our request
            msg = self._hear(silence, silence=silence)
            if msg is None:
                continue
            if msg[0] == Op.REPLY:
                if msg[1] == seq:
                    self.wait_s += time.perf_counter() - t
                    if msg[2] == ERR:
                        raise BusError(str(msg[3]))
                    if len(msg) > 6:
                        self.reply_t, self.horizon, self.idle_limit = msg[4], msg[5], msg[6]
                    return msg[3]
                if msg[1] == 0 and msg[2] == ERR:
                    raise BusError(str(msg[3]))
                continue                           # a stale reply: ignore
            if self.stopped and not final:
                raise Stopped(self.stopped)
            if msg[1] != Event.HEARTBEAT:
                continue
            if self.replay is not None and len(msg) > 2 and msg[2] != ops:
                # a replayed request waits its turn: as long as the machine handles
                # operations, its reply is on the way (the other CPUs may take long)
                ops, start = msg[2], self.last_rx
            elif self.last_rx - start > self.liveness:
                raise ServerGone(f"no reply to {Op(op).name} in {self.liveness:.0f} s "
                                 f"(the server is alive but does not answer"
                                 + (", and handles no operation)" if self.replay is not None
                                    else ")"))

    def recv(self, timeout: float) -> list[Any] | None:
        """One message from the server, or None after ``timeout`` seconds of silence.
        Control messages are acted on here (horizon, stop; heartbeats only prove the
        server alive); machine events are queued in :attr:`events` and counted."""
        if not self.poller.poll(max(int(timeout * 1000), 0)):
            return None
        msg = unpack(self.sock.recv())
        self.last_rx = time.monotonic()
        if msg[0] != Op.EVENT:
            return msg  # type: ignore[no-any-return]
        kind = msg[1]
        if kind in CONTROL_EVENTS:
            if kind == Event.HORIZON:
                self.horizon, self.idle_limit = msg[2], msg[3]
            elif kind == Event.STOP:
                self.stopped = str(msg[2])
            return msg  # type: ignore[no-any-return]
        self.new += 1
        self.received += 1
        if kind == Event.RECALL:
            self._recall(msg[2])                # the bus's own business, not the CPU's
        else:
            if kind == Event.START and self.clock_offset:
                msg[2] += self.clock_offset
            self.events.append(msg)
        return msg  # type: ignore[no-any-return]

    # -- read points -------------------------------------------------------------------
    def read_point(self, stop: Callable[[], bool] | None = None) -> int:
        """A read point (module docstring): take in what the channel holds now or, with
        ``stop``, wait until ``stop()`` holds or a machine message comes; on a replay, read
        exactly what the record says was read here. Returns the number of machine
        messages read (``self.new``). Posted requests are sent first."""
        self.flush()
        self.point += 1
        self.new = 0
        if self.replay is not None:
            if self.replay_limit is not None and self.point > self.replay_limit:
                self._record_ends()
            want = self.replay.get(self.point, 0)
            if want:
                self._replay_read(want)
            return self.new
        if stop is None or stop():
            if self.poller.poll(0):
                while self.recv(0.0) is not None:
                    pass
        else:
            t0 = time.perf_counter()
            self._wait(stop)
            self.point_wait_s += time.perf_counter() - t0
        if self.read_log is not None:
            if self.new:
                self.read_log += (self.point - self._logged_point, self.new)
                self._logged_point = self.point
            # to the recorder as it grows, and every READ_LOG_S at least: a run that dies
            # leaves a record whose reads are known up to about then
            if len(self.read_log) >= 4096 or time.monotonic() >= self._ship_at:
                self.on_read_log(self.read_log)
                self.read_log = []
                self._ship_at = time.monotonic() + READ_LOG_S
        return self.new

    def log_reads(self, send: Callable[[list[int]], None]) -> None:
        """Record the reads (a run being recorded): ``send`` gets the log as it grows,
        every 4096 entries and every READ_LOG_S at least."""
        self.read_log = []
        self.on_read_log = send
        self._ship_at = time.monotonic() + READ_LOG_S

    def _replay_read(self, want: int) -> None:
        since = time.monotonic()
        while self.new < want:
            if self.stopped:
                raise Stopped(self.stopped)
            self._hear(HEARTBEAT_S)
            if self.new < want and time.monotonic() - since > STUCK_S:
                # the server may know why (a divergence); with how many machine messages
                # this CPU has had, so that it can tell a CPU that waits for nothing it has
                # sent from one whose events are still on their way (a busy host)
                since = time.monotonic()
                self.send_control(Op.STUCK, self.point, want, self.new, self.received)

    def _record_ends(self) -> None:
        """A replay of a record cut short: what this CPU read past here is not known, so
        it cannot go on. Tell the server (a divergence) and wait for its STOP."""
        self.send_control(Op.STUCK, self.point, -1, 0)
        while not self.stopped:
            self._hear(HEARTBEAT_S)
        raise Stopped(self.stopped)

    def _wait(self, stop: Callable[[], bool]) -> None:
        """Wait (host time) until ``stop()`` or a machine message; ping and judge the
        server's silence meanwhile."""
        while True:
            now = time.monotonic()
            if now - self.last_tx >= HEARTBEAT_S:
                self.pings += 1
                self.sock.send(pack([Op.PING, 0, 0, "", self.now_ns()]))
                self.last_tx = now
            if self._hear(HEARTBEAT_S) is None:
                continue
            while self.recv(0.0) is not None:   # take the rest of what came
                pass
            if self.new or stop() or self.stopped:
                return

    def wait_start(self, timeout: float) -> bool:
        """Before the machine starts: read until the START event (which the server sends
        each CPU before anything else) and not one message further. True once started."""
        deadline = time.monotonic() + timeout
        while not any(m[1] == Event.START for m in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._hear(min(left, HEARTBEAT_S))
            if self.stopped:
                raise Stopped(self.stopped)
        return True

    def _hear(self, timeout: float, silence: float | None = None) -> list[Any] | None:
        """:meth:`recv` for up to ``timeout`` s (and a heartbeat's time at most), never past
        the moment the server's silence (``silence`` s since its last message, not
        counting the time this process did not run: ``STALL_S``; :attr:`silence` unless
        given) would mean it is dead; once it has been silent that long,
        :meth:`_last_look`, then :class:`ServerGone`. None: nothing came yet, the server
        may still be alive."""
        if silence is None:
            silence = self.silence
        t0 = time.monotonic()
        # (a heartbeat's time at most: a stall inside a longer wait would count as silence)
        wait = min(timeout, HEARTBEAT_S, max(self.last_rx + silence - t0, 0.0))
        msg = self.recv(wait)
        late = time.monotonic() - t0 - wait
        if msg is None and late > STALL_S:      # not listening: no silence of the server's
            self.last_rx += late
            self.stalls += 1
        if msg is None and time.monotonic() - self.last_rx >= silence:
            msg = self._last_look()
            if msg is None and not self._server_starved(silence):
                raise ServerGone(f"nothing from the server in "
                                 f"{time.monotonic() - self.last_rx:.2f} s")
        return msg

    def _last_look(self) -> list[Any] | None:
        """The server has said nothing for the whole silence by our clock. Before that
        stands, one more look of LATE_GRACE_S (a live server sends a heartbeat every
        HEARTBEAT_S): if this process was not listening all along (stopped, or starved
        by a busy host, even for a moment before the silence ran out), what the server
        sent meanwhile may still be in ZeroMQ's I/O thread, which was stopped with it.
        Returns what comes, if anything; None: the silence stands. (Once it looked only
        when it noticed the silence late, and a CPU starved until just before it ran out,
        on a host with two busy loops beside the machine, took a live server for dead.)"""
        return self.recv(LATE_GRACE_S)

    def _server_starved(self, silence: float) -> bool:
        """The server has been silent for ``silence`` s and more: whether it is only
        starved. A server on this host whose process lives and is not stopped is (the host
        did not run it, or it is busy) until its silence reaches SERVER_STARVED_S; the
        caller then looks again (a last look, LATE_GRACE_S, each time), and each silence
        so waited out counts once in :attr:`server_waits`. A server on another host, or
        one that is not :func:`lives_unstopped`: False, it is taken for dead."""
        proc = self.server
        quiet = time.monotonic() - self.last_rx
        if proc is None or quiet >= max(silence, SERVER_STARVED_S) or not lives_unstopped(proc):
            return False
        if self._waited_at != self.last_rx:
            self._waited_at = self.last_rx
            self.server_waits += 1
        return True

    def poll_events(self, timeout: float) -> bool:
        """Wall time: wait up to ``timeout`` s for an event (heartbeats do not count);
        queue every message that came. True if the event queue is non-empty afterwards.
        Raises :class:`ServerGone` once the server has been silent for ``silence`` s."""
        self.flush()
        now = time.monotonic()
        if now - self.last_tx >= HEARTBEAT_S:
            self.pings += 1
            self.sock.send(pack([Op.PING, 0, 0, "", 0]))
            self.last_tx = now
        deadline = now + timeout
        while True:
            if self._hear(max(deadline - time.monotonic(), 0.0)) is not None:
                while self.recv(0) is not None:
                    pass
                if self.events:
                    return True
            if time.monotonic() >= deadline:
                return bool(self.events)

    def start_heartbeat(self) -> None:
        """PING the server every HEARTBEAT_S from a thread with its own socket (identity
        ``<ours>/hb``), so that a CPU deep in a long computation (booting 1 GiB of
        vm_pages) is not taken for a stopped or dead one: only a process that is stopped,
        killed or wedged with the GIL held stops beating. (A bus on a channel has no
        heartbeat: its server is in the same process.)"""
        ctx = self.ctx
        if ctx is None:
            return
        stop = threading.Event()

        def beat() -> None:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IDENTITY, f"{self.identity}/hb".encode())
            if self.curve:
                s.curve_secretkey = self.curve["secret"]
                s.curve_publickey = self.curve["public"]
                s.curve_serverkey = self.curve["server"]
            s.connect(self.endpoint)
            try:
                while not stop.wait(HEARTBEAT_S):
                    try:
                        s.send(pack([Op.PING, 0, 0, "", 0]), zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
            finally:
                s.close(0)

        th = threading.Thread(target=beat, name="bus-heartbeat", daemon=True)
        th.start()
        self.beat = (th, stop)

    def close(self, linger_ms: int = 0) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.give_back_lines()
            except zmq.ZMQError:
                pass
            if self.beat is not None:
                self.beat[1].set()
                self.beat[0].join(2.0)
            self.sock.close(linger_ms)
            if self.ctx is not None:
                self.ctx.term()
