"""The CPU's side of the bus: one DEALER socket to the machine server.

Two ways to issue a request (DESIGN.md decision 10):

* :meth:`Bus.call` waits for the reply: loads, acquires, trylocks, atomics that return a
  value. The CPU is stalled meanwhile, as a real CPU on a memory access.
* :meth:`Bus.post` does not: stores, releases, wakeups' follow-ups. The channel is FIFO,
  so the server still applies them in program order. Posted requests are queued, like a
  CPU's store buffer, and leave in one frame with the next call (ahead of it), before the
  CPU waits for anything, or when POST_BATCH have queued: a release costs no message of
  its own, and a CPU never waits while holding back a request another CPU may need.

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

Asynchronous events (grants, IPIs, start, halt) can arrive at any time; the bus queues them
in :attr:`Bus.events` for the CPU to deliver at its next interrupt point.

Liveness, both ways (``hw.protocol.HEARTBEAT_S``): the server sends every CPU a
``HEARTBEAT`` event every HEARTBEAT_S (0.25 s), which the bus swallows; every wait here raises
:class:`ServerGone` after ``silence`` seconds (``SERVER_SILENCE_S``, 1.25 s) in which
*nothing* came from the server, so a killed server is noticed within 2 s by every CPU, even
one on another host. A bus judges the server's silence only after it has listened: one
that finds itself more than LATE_S past the moment the silence would run out (its process
was stopped with SIGSTOP, or starved by the host) waits LATE_GRACE_S more for what ZeroMQ's
I/O thread, stopped with it, has not handed over yet (:meth:`Bus._late_grace`), so a CPU
paused for less than the server's PEER_LOST_S runs on. In the other direction, a bus that has sent nothing for
``HEARTBEAT_S`` posts a ``PING`` whenever it waits, so the server can tell a quiet CPU from a
dead or stopped one. A call also gives up after ``liveness`` seconds without its reply (the
server is alive but does not answer: a server bug).

Every request carries the simulated thread (``tid``) and the kernel source site.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import zmq

from hw.protocol import (AF_LINE, ERR, EXCL, GRANTED, GRANTED_LINE, HEARTBEAT_S, MAX_BATCH,
                         SERVER_SILENCE_S, VERSION, Event, Op, pack, unpack)

# Posted requests queue up to this many before they are sent without waiting for a call.
POST_BATCH = min(64, MAX_BATCH - 1)
# A bus that notices the server's silence this much later than it ran out was not
# listening (stopped, or starved): it first waits LATE_GRACE_S for what is on its way.
LATE_S = 0.1
LATE_GRACE_S = 2 * HEARTBEAT_S


class BusError(Exception):
    """The server refused a request (the text says why); the kernel panics on it."""


class ServerGone(Exception):
    """The server stopped answering: the machine is dead."""


class Bus:
    def __init__(self, endpoint: str, identity: str, liveness: float = 10.0,
                 silence: float = SERVER_SILENCE_S, curve: dict[str, bytes] | None = None,
                 lines: bool = True) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())   # before connect
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        if curve:                  # CURVE client: our key pair and the server's public key
            self.sock.curve_secretkey = curve["secret"]
            self.sock.curve_publickey = curve["public"]
            self.sock.curve_serverkey = curve["server"]
        self.sock.connect(endpoint)
        self.poller = zmq.Poller()              # one for good: Socket.poll makes one a call
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

    def hello(self, role: str, cpu: int, pid: int) -> Any:
        # the server may still be starting: the first answer gets the longer bound
        return self._call(Op.HELLO, 0, "", (VERSION, role, cpu, pid), self.liveness)

    def post(self, op: int, tid: int, site: str, *args: Any, now: bool = False) -> None:
        """Queue a request that needs no reply; it leaves with the next call, before the
        next wait, or at once with ``now`` (or once POST_BATCH are queued)."""
        self.posts += 1
        self.pending.append(pack([op, 0, tid, site, *args]))
        if self.lines and (op == Op.RELEASE or op == Op.SLEEP):
            self._line_release(tid, args[0] if op == Op.RELEASE else args[1])
        if now or len(self.pending) >= POST_BATCH:
            self.flush()

    # -- lines: the lock word's cache line, kept by the CPU that keeps taking the lock ----
    def _line_acquire(self, tid: int, site: str, args: tuple[Any, ...]) -> bool:
        """Take an exclusive lock on the strength of our line, if we have it and no thread
        of ours holds the lock: the ACQUIRE is posted (AF_LINE) and the server, which
        lets no other CPU take a lock while our line stands, records the grant."""
        ln = self.lines.get(args[0])
        if ln is None or ln[0] or ln[1] or args[1] != EXCL:
            return False
        if self.poller.poll(0):
            self._drain()                       # a RECALL may be waiting
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

    def _drain(self) -> None:
        """Take in whatever has arrived, without waiting (events queue up)."""
        while True:
            msg = self.recv(0.0)
            if msg is None:
                return
            if msg[0] != Op.REPLY and msg[1] != Event.HEARTBEAT:
                self.events.append(msg)

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
        self.seq += 1
        seq = self.seq
        self.calls += 1
        t = time.perf_counter()
        frame = pack([op, seq, tid, site, *args])
        if self.pending:                       # the queued posts go first, in one frame
            self.pending.append(frame)
            frame = b"".join(self.pending)
            self.pending.clear()
        self.sock.send(frame)
        self.frames += 1
        self.last_tx = start = time.monotonic()
        while True:
            # silence counts from the server's last message, not from our request
            msg = self.recv(max(self.last_rx + silence - time.monotonic(), 0.0))
            if msg is None:
                msg = self._late_grace(silence)
            if msg is None:
                raise ServerGone(f"nothing from the server in {silence:.2f} s")
            if msg[0] == Op.REPLY:
                if msg[1] == seq:
                    self.wait_s += time.perf_counter() - t
                    if msg[2] == ERR:
                        raise BusError(str(msg[3]))
                    return msg[3]
                if msg[1] == 0 and msg[2] == ERR:
                    raise BusError(str(msg[3]))
                continue                           # a stale reply: ignore
            if msg[1] != Event.HEARTBEAT:
                self.events.append(msg)
            elif self.last_rx - start > self.liveness:
                raise ServerGone(f"no reply to {Op(op).name} in {self.liveness:.0f} s "
                                 f"(the server is alive but does not answer)")

    def recv(self, timeout: float) -> list[Any] | None:
        """One message from the server (heartbeats included), or None after ``timeout``
        seconds of silence."""
        if not self.poller.poll(max(int(timeout * 1000), 0)):
            return None
        msg = unpack(self.sock.recv())
        self.last_rx = time.monotonic()
        if msg[0] == Op.EVENT and msg[1] == Event.RECALL:
            self._recall(msg[2])                # the bus's own business, not the CPU's
            msg = [Op.EVENT, Event.HEARTBEAT]   # (callers count it as a sign of life)
        if self.clock_offset and msg[0] == Op.EVENT and msg[1] == Event.START:
            msg[2] += self.clock_offset
        return msg  # type: ignore[no-any-return]

    def _late_grace(self, silence: float) -> list[Any] | None:
        """The server has said nothing for ``silence`` s by our clock. If we notice it
        more than LATE_S after the moment it ran out, we were not listening then (the
        process was stopped, or the host starved it), and what the server sent meanwhile
        may still be in ZeroMQ's I/O thread, which was stopped with us: wait LATE_GRACE_S
        (a live server sends a heartbeat every HEARTBEAT_S) and return what comes, if
        anything. None: the silence stands."""
        if time.monotonic() - (self.last_rx + silence) <= LATE_S:
            return None
        return self.recv(LATE_GRACE_S)

    def poll_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for an event (heartbeats do not count); queue every
        message that came. True if the event queue is non-empty afterwards. Raises
        :class:`ServerGone` once the server has been silent for ``silence`` s."""
        self.flush()
        now = time.monotonic()
        if now - self.last_tx >= HEARTBEAT_S:
            self.pings += 1
            self.sock.send(pack([Op.PING, 0, 0, ""]))
            self.last_tx = now
        deadline = now + timeout
        while True:
            # never sleep past the moment the server's silence would mean it is dead
            left = min(deadline, self.last_rx + self.silence) - now
            msg = self.recv(max(left, 0.0))
            if msg is None:
                now = time.monotonic()
                if now - self.last_rx >= self.silence:
                    msg = self._late_grace(self.silence)
                    if msg is None:
                        raise ServerGone(f"nothing from the server in "
                                         f"{now - self.last_rx:.2f} s (no heartbeat)")
                elif now >= deadline:
                    return bool(self.events)
                else:
                    continue
            while msg is not None:
                if msg[0] != Op.REPLY and msg[1] != Event.HEARTBEAT:
                    self.events.append(msg)
                msg = self.recv(0)
            if self.events:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False

    def start_heartbeat(self) -> None:
        """PING the server every HEARTBEAT_S from a thread with its own socket (identity
        ``<ours>/hb``), so that a CPU deep in a long computation (booting 1 GiB of
        vm_pages) is not taken for a stopped or dead one: only a process that is stopped,
        killed or wedged with the GIL held stops beating."""
        stop = threading.Event()

        def beat() -> None:
            s = self.ctx.socket(zmq.DEALER)
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
                        s.send(pack([Op.PING, 0, 0, ""]), zmq.NOBLOCK)
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
            self.ctx.term()
