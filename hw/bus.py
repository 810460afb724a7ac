"""The CPU's side of the bus: one DEALER socket to the machine server.

Two ways to issue a request (DESIGN.md decision 10):

* :meth:`Bus.call` waits for the reply: loads, acquires, trylocks, atomics that return a
  value. The CPU is stalled meanwhile, as a real CPU on a memory access.
* :meth:`Bus.post` does not: stores, releases, wakeups' follow-ups. The channel is FIFO,
  so the server still applies them in program order.

Asynchronous events (grants, IPIs, start, halt) can arrive at any time; the bus queues them
in :attr:`Bus.events` for the CPU to deliver at its next interrupt point. Every wait here is
bounded by ``liveness`` seconds of silence from the server: a server that stops answering
ends the CPU process rather than hanging it.

Every request carries the simulated thread (``tid``) and the kernel source site.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import zmq

from hw.protocol import ERR, VERSION, Op, pack, unpack


class BusError(Exception):
    """The server refused a request (the text says why); the kernel panics on it."""


class ServerGone(Exception):
    """The server stopped answering: the machine is dead."""


class Bus:
    def __init__(self, endpoint: str, identity: str, liveness: float = 10.0) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())   # before connect
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.liveness = liveness
        self.seq = 0
        self.events: collections.deque[list[Any]] = collections.deque()
        self.calls = 0
        self.posts = 0
        self.wait_s = 0.0
        self.closed = False

    def hello(self, role: str, cpu: int, pid: int) -> Any:
        return self.call(Op.HELLO, 0, "", VERSION, role, cpu, pid)

    def post(self, op: int, tid: int, site: str, *args: Any) -> None:
        self.posts += 1
        self.sock.send(pack([op, 0, tid, site, *args]))

    def call(self, op: int, tid: int, site: str, *args: Any) -> Any:
        self.seq += 1
        seq = self.seq
        self.calls += 1
        t = time.perf_counter()
        self.sock.send(pack([op, seq, tid, site, *args]))
        while True:
            msg = self.recv(self.liveness)
            if msg is None:
                raise ServerGone(f"no reply from the server in {self.liveness:.0f} s")
            if msg[0] == Op.REPLY:
                if msg[1] == seq:
                    self.wait_s += time.perf_counter() - t
                    if msg[2] == ERR:
                        raise BusError(str(msg[3]))
                    return msg[3]
                if msg[1] == 0 and msg[2] == ERR:
                    raise BusError(str(msg[3]))
                continue                           # a stale reply: ignore
            self.events.append(msg)

    def recv(self, timeout: float) -> list[Any] | None:
        """One message from the server, or None after ``timeout`` seconds of silence."""
        if not self.sock.poll(max(int(timeout * 1000), 0)):
            return None
        return unpack(self.sock.recv())  # type: ignore[no-any-return]

    def poll_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for an event; queue every message that came. True if
        the event queue is non-empty afterwards."""
        msg = self.recv(timeout)
        while msg is not None:
            if msg[0] != Op.REPLY:
                self.events.append(msg)
            msg = self.recv(0)
        return bool(self.events)

    def close(self, linger_ms: int = 0) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close(linger_ms)
            self.ctx.term()
