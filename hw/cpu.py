"""One simulated CPU: its run loop, interrupts, thread stacks and per-CPU counters.

Each CPU is its own OS process. It runs one simulated thread at a time; a thread is a
greenlet (DESIGN.md decision 4), so kernel code that blocks is a plain call that switches
to another greenlet underneath, the way ``cpu_switch`` swaps kernel stacks. This module is
the hardware half: it knows stacks, the clock, the bus and interrupts, and nothing of the
kernel. The kernel installs its interrupt vectors (``on_clock``, ``on_ipi``, ``on_grant``)
and a ``describe`` hook for crash dumps, and decides *which* thread runs; this module only
performs the switch.

Interrupts. Clock ticks and the asynchronous events that the server sends (IPIs, lock
grants) are delivered at *interrupt points*: while the CPU idles, while a thread computes
(:meth:`Cpu.work`), and when a thread leaves its last critical section
(:meth:`Cpu.critical_exit`, as FreeBSD re-enables interrupts). Inside a critical section
(any spin mutex held) they wait, exactly like interrupts masked on i386. Halts and panics
from the server are noticed in every wait, even a spin.

Where the time goes. Every tick is charged to what the CPU was doing when it came due:
``user`` (a thread in :meth:`work` in user mode), ``sys`` (kernel code, including stalls on
the bus), ``intr`` (an interrupt handler), ``spin`` (waiting for a spin mutex) or
``idle``. These are the per-CPU ``cp_time`` counters.

Time (``hw/clock.py``). In virtual time the CPU's clock advances by the cost of what it
does (:class:`Costs`: a request by kind, a context switch, an interrupt) and by the work it
is told to do; a CPU with nothing to run jumps to its next tick, once the server's idle
limit says no other CPU can still act before it. Before it lets its clock pass the horizon
(or, idle, the idle limit) the server gave it, the CPU waits (host time) at a *read point*
of its bus, which is where it also takes in what the server sent: every read point is numbered
and recorded (``hw/bus.py``), so that a replay takes every event at the same place. A read
point that read something never lets the clock jump: what the CPU does after it depends
only on what it read, never on how long it waited, so a replay, which does not wait for
any horizon, does the same.

Thread exit. A greenlet cannot switch away and die at once, so a dying thread raises
:class:`ThreadExit` naming its successor; the trampoline makes the successor its parent
and returns, which resumes the successor and frees the dead stack.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from types import FrameType
from typing import Any, Callable

import greenlet

from smp.hw.bus import Bus, BusError, ServerGone, Stopped
from smp.hw.chaos import Chaos
from smp.hw.clock import NEVER, Clock, VirtualClock
from smp.hw.protocol import SYNC_IDLE, SYNC_RUN, SYNC_SPIN, Event, Op

MODES = ("user", "nice", "sys", "intr", "idle", "spin")

# requests that move a page of memory (4 KiB) cost ``page_ns``
PAGE_OPS = frozenset({Op.PZERO, Op.PCOPY, Op.PSUM, Op.SWAPOUT, Op.SWAPIN, Op.SWAPCOPY})


@dataclasses.dataclass(frozen=True)
class Costs:
    """What the CPU's own work costs in simulated time (virtual time; ``cost.*`` keys)."""
    call_ns: int = 40_000       # a request that waits for its value
    post_ns: int = 10_000       # a request that does not
    page_ns: int = 60_000       # a request that moves a page
    switch_ns: int = 20_000     # a context switch
    intr_ns: int = 10_000       # taking an interrupt (a tick, an event)


class ThreadExit(BaseException):
    """Raised by a dying thread's last switch; carries the context that runs next."""

    def __init__(self, successor: "Context") -> None:
        super().__init__()
        self.successor = successor


class _Halted(BaseException):
    """Unwinds nothing: used only to leave a greenlet that is never resumed."""


@dataclasses.dataclass
class Counters:
    """Per-CPU counters, kept locally and reported (never polled over the bus)."""
    ticks: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(MODES, 0))
    ctxsw_vol: int = 0
    ctxsw_invol: int = 0
    lock_acquires: int = 0
    lock_contested: int = 0
    mem_ops: int = 0
    ipis_sent: int = 0
    ipis_received: int = 0
    interrupts: int = 0
    spin_wait_s: float = 0.0      # simulated s spent spinning for spin mutexes
    sleep_wait_s: float = 0.0     # simulated s threads spent blocked on sleep locks

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ctxsw"] = self.ctxsw_vol + self.ctxsw_invol
        return d


def _visible_stack(frame: FrameType) -> list[str]:
    """The stack from ``frame`` out, as ``traceback.format_stack`` gives it, without the
    frames that hide themselves (``__tracebackhide__``)."""
    shown = traceback.StackSummary.extract(
        (f, line) for f, line in traceback.walk_stack(frame) if not _hides(f))
    shown.reverse()
    return [line.rstrip("\n") for line in shown.format()]


def _hides(frame: FrameType) -> bool:
    if frame.f_globals.get("__tracebackhide__"):
        return True
    return ("__tracebackhide__" in frame.f_code.co_varnames
            and bool(frame.f_locals.get("__tracebackhide__")))


class Context:
    """A simulated thread's stack and what the CPU keeps for it across switches."""

    __slots__ = ("tid", "name", "glet", "critnest", "kdata", "__weakref__")

    def __init__(self, tid: int, name: str, glet: greenlet.greenlet) -> None:
        self.tid = tid
        self.name = name
        self.glet = glet
        self.critnest = 0                # spin locks held / critical sections
        self.kdata: Any = None           # the kernel's per-thread handle (struct thread)

    def stack(self) -> list[str]:
        """The thread's Python stack as a traceback prints it, outermost first, without
        the frames that hide themselves from tracebacks (``__tracebackhide__``, pytest's
        convention, in the module or the function): a kernel's memory access is one
        instruction, not a frame of its trace."""
        frame = self.glet.gr_frame
        return [] if frame is None else _visible_stack(frame)


class Cpu:
    """The hardware of one CPU process."""

    def __init__(self, cpu_id: int, bus: Bus, clock: Clock | VirtualClock,
                 stats_interval: float = 0.0, costs: Costs | None = None) -> None:
        self.id = cpu_id
        self.stats_interval = stats_interval     # wall s between published samples (0: off)
        self.chaos: Chaos | None = None          # set by the machine when chaos is on
        self.next_stats = 0.0
        self._pending_ticks = 0
        self.bus = bus
        self.clock = clock
        self.virtual = clock.virtual
        self.costs = costs or Costs()
        bus.now_ns = clock.now_ns
        self.counters = Counters()
        self.waited_ns = 0          # how far the last call's reply moved the clock (virtual)
        self.main = greenlet.getcurrent()
        self.cur: Context | None = None
        self.mode = "sys"
        self.in_intr = False
        self.halted: str | None = None
        self.panicked = False
        self.contexts: dict[int, Context] = {}
        self.final_extra: dict[str, Any] = {}
        # interrupt vectors and hooks, installed by the kernel's machine-dependent layer
        self.on_clock: Callable[[], None] = lambda: None
        self.on_ipi: Callable[[int, str, Any], None] = lambda src, kind, args: None
        self.on_grant: Callable[[int, int], None] = lambda tid, lock: None
        self.on_final: Callable[[], None] = lambda: None
        self.describe: Callable[[Context], dict[str, Any]] = lambda ctx: {}
        self.final_report: Callable[[], dict[str, Any]] = lambda: {}
        self.kernel_sample: Callable[[], dict[str, int]] = lambda: {}

    # -- the bus, on behalf of the running thread --------------------------------------
    @property
    def tid(self) -> int:
        return self.cur.tid if self.cur is not None else 0

    def call(self, op: int, site: str, *args: Any) -> Any:
        """A request that waits for its value; a refusal is a fatal trap."""
        ok, value = self.probe(op, site, *args)
        if not ok:
            self.panic(f"fatal trap: {value}", site=site)
        return value

    def probe(self, op: int, site: str, *args: Any) -> tuple[bool, Any]:
        """``call``, but a refusal comes back as (False, why) instead of a fatal trap: for
        a kernel check that names what it found before it panics."""
        if self.chaos is not None:
            self._chaos_point(op)
        if self.virtual and self.clock.started:
            self._horizon_point(self.clock.t)   # type: ignore[union-attr]
        try:
            value = self.bus.call(op, self.tid, site, *args)
        except BusError as e:
            return False, str(e)
        except ServerGone as e:
            self._server_gone(str(e))
        except Stopped as e:
            self._stopped(str(e))
        if self.virtual:
            clock = self.clock
            clock.t += self.costs.page_ns if op in PAGE_OPS else self.costs.call_ns
            # a reply that happened later than this CPU's time (a lock left free by a
            # CPU ahead of it): the CPU waited for it
            self.waited_ns = max(self.bus.reply_t - clock.t, 0)
            clock.t += self.waited_ns
        self._absorb()
        return True, value

    def post(self, op: int, site: str, *args: Any) -> None:
        if self.chaos is not None:
            self._chaos_point(op)
        self.bus.post(op, self.tid, site, *args)
        if self.virtual:
            self.clock.t += self.costs.page_ns if op in PAGE_OPS else self.costs.post_ns

    def _chaos_point(self, op: int) -> None:
        assert self.chaos is not None
        if self.virtual:
            d = self.chaos.stall_ns(op)
            if d:
                self._stall(d)
        else:
            self.chaos.point(op, self.bus.flush)

    # -- read points and the horizon (virtual time) -------------------------------------
    def _horizon_point(self, need: int) -> None:
        """A read point before a request: the request may not be made past the horizon.
        Waits (host time) until it may; reads nothing when it need not wait."""
        bus = self.bus
        while True:
            if bus.replay is None and need <= bus.horizon:
                bus.point += 1                  # a read point that had nothing to do
                # ... but a halt or panic already taken stops the CPU here, as at every
                # read point: whether this one had to wait is the host's doing, and the
                # replay (which always reads) must stop at the same place
                self._check_halt()
                return
            if self._block_point(need, SYNC_RUN) == 0:
                return

    def _block_point(self, need: int, state: int) -> int:
        """A read point where this CPU waits until the horizon reaches ``need`` (``state``
        says why, for the server's horizon) or a machine message comes. Returns how many
        came: with none, the CPU may move its clock to ``need``."""
        bus = self.bus
        if bus.replay is not None:
            return self._read(None)
        bus.flush()
        # An idle CPU waits until no other CPU can still act before need; a running one,
        # until the slowest is less than a quantum behind.
        idle = state == SYNC_IDLE

        def limit() -> int:
            return bus.idle_limit if idle else bus.horizon

        if need > limit():
            bus.send_control(Op.SYNC, need, state, bus.received)
        return self._read(lambda: limit() >= need)

    def _read(self, stop: Callable[[], bool] | None) -> int:
        try:
            n = self.bus.read_point(stop)
        except ServerGone as e:
            self._server_gone(str(e))
        except Stopped as e:
            self._stopped(str(e))
        self._absorb()
        self._check_halt()                      # a halt or panic stops the CPU right here
        return n

    def _stall(self, ns: int) -> None:
        """Chaos: this CPU stalls for ``ns`` simulated ns, as on a cache miss or an SMI;
        the others run on (the horizon makes it wait for them in host time)."""
        target = self.clock.t + ns
        while self._block_point(target, SYNC_RUN):
            pass
        self.clock.t = max(self.clock.t, target)
        self.chaos.delay_s += ns / 1e9  # type: ignore[union-attr]

    def _sync_event(self, msg: list[Any]) -> None:
        """An event's time moves this CPU's clock to at least that time."""
        t = msg[-1]
        if self.virtual and isinstance(t, int) and t > self.clock.t:   # type: ignore[union-attr]
            self.clock.t = t                                            # type: ignore[union-attr]

    # -- contexts and switching --------------------------------------------------------
    def new_context(self, tid: int, name: str, fn: Callable[[], None]) -> Context:
        ctx: Context

        def trampoline(*_: Any) -> None:
            try:
                fn()
            except ThreadExit as e:
                ctx.glet.parent = e.successor.glet
                self.contexts.pop(ctx.tid, None)
                return
            except (_Halted, greenlet.GreenletExit):
                return
            except BaseException as e:  # noqa: BLE001 - a kernel bug is a panic
                if self.halted:
                    return
                self.panic(f"fatal trap: unhandled {type(e).__name__}: {e}",
                           stack=traceback.format_exc().splitlines())
            if not self.halted:
                self.panic(f"thread {name} returned from its start function")

        ctx = Context(tid, name, greenlet.greenlet(trampoline, parent=self.main))
        self.contexts[tid] = ctx
        return ctx

    def switch_to(self, ctx: Context, voluntary: bool = True) -> None:
        """Stop running the current context and resume ``ctx`` (cpu_switch)."""
        if voluntary:
            self.counters.ctxsw_vol += 1
        else:
            self.counters.ctxsw_invol += 1
        if self.virtual:
            self.clock.t += self.costs.switch_ns   # type: ignore[union-attr]
        prev = self.cur
        self.cur = ctx
        ctx.glet.switch()
        self.cur = prev
        self._check_halt()

    def exit_to(self, ctx: Context) -> None:
        """The current thread dies and ``ctx`` runs next. Never returns."""
        self.counters.ctxsw_vol += 1
        if self.virtual:
            self.clock.t += self.costs.switch_ns   # type: ignore[union-attr]
        self.cur = ctx
        raise ThreadExit(ctx)

    # -- interrupts --------------------------------------------------------------------
    def critical_enter(self) -> None:
        assert self.cur is not None
        self.cur.critnest += 1

    def critical_exit(self) -> None:
        assert self.cur is not None
        self.cur.critnest -= 1
        if self.cur.critnest == 0:
            self.intr_point()

    @property
    def interrupts_enabled(self) -> bool:
        return not self.in_intr and (self.cur is None or self.cur.critnest == 0)

    def _absorb(self) -> None:
        """Act at once on the events that cannot wait: start, halt, panic."""
        ev = self.bus.events
        if not ev:
            return
        keep = []
        while ev:
            msg = ev.popleft()
            kind = msg[1]
            if kind == Event.START:
                self.clock.start(msg[2])
            elif kind == Event.HALT:
                self.halted = self.halted or f"halt: {msg[2]}"
            elif kind == Event.PANIC:
                self.halted = self.halted or f"panic on cpu {msg[2]}: {msg[3]}"
            else:
                keep.append(msg)
        ev.extend(keep)

    def sample(self) -> dict[str, Any]:
        """This CPU's counters now: what it publishes (never polled over the bus)."""
        c = self.counters
        return {"cpu": self.id, "pid": os.getpid(), "wall": time.time(),
                "sim": round(self.clock.now(), 4), "ticks": dict(c.ticks),
                "ctxsw_vol": c.ctxsw_vol, "ctxsw_invol": c.ctxsw_invol,
                "lock_acquires": c.lock_acquires, "lock_contested": c.lock_contested,
                "mem_ops": c.mem_ops, "ipis_sent": c.ipis_sent,
                "ipis_received": c.ipis_received, "interrupts": c.interrupts,
                "spin_wait_s": round(c.spin_wait_s, 6),
                "sleep_wait_s": round(c.sleep_wait_s, 6),
                "bus_calls": self.bus.calls, "bus_posts": self.bus.posts,
                "bus_wait_s": round(self.bus.wait_s, 6), "kernel": self.kernel_sample()}

    def _publish(self, last: bool = False) -> None:
        """Send a stats sample if one is due (``last``: the CPU stops, send it now)."""
        now = time.monotonic()
        if last or now >= self.next_stats:
            self.next_stats = now + self.stats_interval
            self.bus.send_control(Op.REPORT, "stats", self.sample())

    def _charge(self) -> int:
        if self.stats_interval and self.clock.started:
            self._publish()
        n = self.clock.due()
        if n:
            self.clock.take(n)
            self.counters.ticks[self.mode] += n
        return n

    def intr_point(self) -> None:
        """Take the ticks and events that are due, if interrupts are enabled (in virtual
        time this is a read point: what has come in is taken in first)."""
        if self.virtual and self.clock.started:
            self._read(None)
        n = self._charge()
        self._absorb()
        self._check_halt()
        if not self.interrupts_enabled:
            self._pending_ticks += n
            return
        n += self._pending_ticks
        self._pending_ticks = 0
        if not n and not self.bus.events:
            return
        saved, self.mode, self.in_intr = self.mode, "intr", True
        intr_ns = self.costs.intr_ns if self.virtual else 0
        try:
            for _ in range(n):
                self.counters.interrupts += 1
                if intr_ns:
                    self.clock.t += intr_ns   # type: ignore[union-attr]
                self.on_clock()
            while self.bus.events:
                msg = self.bus.events.popleft()
                self.counters.interrupts += 1
                if intr_ns:
                    self._sync_event(msg)
                    self.clock.t += intr_ns   # type: ignore[union-attr]
                if msg[1] in (Event.GRANT, Event.WAKE):
                    self.on_grant(msg[2], msg[3])
                elif msg[1] == Event.IPI:
                    self.counters.ipis_received += 1
                    self.on_ipi(msg[2], msg[3], msg[4])
                elif msg[1] == Event.FINAL:
                    self.on_final()
        finally:
            self.mode, self.in_intr = saved, False
        self._check_halt()

    def _wait(self, until: float) -> None:
        """Wall time: sleep on the bus until host time ``until``, the next tick, or an
        event."""
        now = time.monotonic()
        limit = until
        if self.clock.started:
            limit = min(limit, self.clock.next_tick_host())   # type: ignore[union-attr]
        try:
            self.bus.poll_events(max(limit - now, 0.0))
        except ServerGone as e:
            self._server_gone(str(e))
        self._absorb()

    def work(self, sim_us: float, mode: str = "sys") -> None:
        """The current thread computes for ``sim_us`` simulated microseconds in ``mode``
        ('user', 'nice' or 'sys'); interrupts are taken meanwhile if enabled."""
        saved, self.mode = self.mode, mode
        try:
            if not self.clock.started:
                return
            if self.virtual:
                clock: VirtualClock = self.clock   # type: ignore[assignment]
                deadline = clock.t + int(sim_us * 1000)
                while True:
                    self.intr_point()
                    if clock.t >= deadline:
                        break
                    target = min(deadline, clock.next_tick_ns())
                    if self._block_point(target, SYNC_RUN) == 0:
                        clock.t = max(clock.t, target)
                return
            deadline = self.clock.host_deadline(sim_us / 1e6)   # type: ignore[union-attr]
            while True:
                self.intr_point()
                if time.monotonic() >= deadline:
                    break
                self._wait(deadline)
        finally:
            self.mode = saved

    def idle_wait(self) -> None:
        """Nothing to run: wait for the next tick or an event, then take them. In virtual
        time the clock jumps to the next tick, unless an event comes first."""
        saved, self.mode = self.mode, "idle"
        try:
            if self.virtual and self.clock.started:
                if not self.bus.events:
                    clock: VirtualClock = self.clock   # type: ignore[assignment]
                    t_next = clock.next_tick_ns()
                    if self._block_point(t_next, SYNC_IDLE) == 0:
                        clock.t = max(clock.t, t_next)
                    else:
                        first = min((m[-1] for m in self.bus.events
                                     if isinstance(m[-1], int) and m[-1] > 0), default=0)
                        if first:
                            clock.t = max(clock.t, min(first, t_next))
            elif not self.bus.events:
                deadline = time.monotonic() + 0.25
                self._wait(deadline)
            self.intr_point()
        finally:
            self.mode = saved

    def spin_wait(self, tid: int, lock: int) -> None:
        """Spin until the server grants ``lock`` to ``tid`` (interrupts stay masked)."""
        saved, self.mode = self.mode, "spin"
        t0 = self.clock.now()
        try:
            while True:
                for msg in self.bus.events:
                    if msg[1] == Event.GRANT and msg[2] == tid and msg[3] == lock:
                        self.bus.events.remove(msg)
                        self._sync_event(msg)
                        self._pending_ticks += self._charge()   # run when unmasked
                        return
                self._pending_ticks += self._charge()
                self._check_halt()
                if self.virtual:
                    self._block_point(NEVER, SYNC_SPIN)
                else:
                    self._wait(time.monotonic() + 0.25)
        finally:
            self.mode = saved
            self.counters.spin_wait_s += self.clock.now() - t0

    def ipi(self, cpu: int, kind: str, args: Any, site: str) -> None:
        self.counters.ipis_sent += 1
        self.post(Op.IPI, site, cpu, kind, args)
        self.bus.flush()                    # an interrupt is not held back

    # -- stopping ----------------------------------------------------------------------
    def _check_halt(self) -> None:
        if self.halted and greenlet.getcurrent() is not self.main:
            self.main.switch()
            raise _Halted()                       # not reached: main never comes back

    def _server_gone(self, why: str) -> None:
        os.write(2, f"cpu{self.id}: the machine server is gone ({why}); stopping\n".encode())
        os._exit(3)

    def _stopped(self, why: str) -> None:
        """A replay reached its end point: stop here, every thread where it is."""
        self.halted = self.halted or f"stopped: {why}"
        self._check_halt()
        raise _Halted()

    def panic(self, message: str, stack: list[str] | None = None, site: str = "",
              kstack: list[str] | None = None) -> None:
        """Stop the machine: report to the server, then stop this CPU. Never returns.
        ``stack``: the Python trace; ``kstack``: the kernel's own frames (``file:line
        function``, outermost first), as a kernel debugger shows them."""
        if not self.panicked:
            self.panicked = True
            if stack is None:       # (a fatal trap in a load: the load's frames hidden)
                stack = _visible_stack(sys._getframe(1))
            cur = self.cur
            report = {"message": message, "cpu": self.id, "site": site,
                      "tid": cur.tid if cur else 0, "thread": cur.name if cur else "",
                      "stack": stack, "kstack": kstack or [],
                      "sim_time": round(self.clock.now(), 6),
                      "source": "cpu"}
            try:
                self.bus.post(Op.REPORT, self.tid, site, "panic", report, now=True)
            except Exception:  # noqa: BLE001 - the bus may be the thing that failed
                pass
        self.halted = self.halted or f"panic: {message}"
        self._check_halt()
        raise _Halted()

    def run(self, boot: Context) -> dict[str, Any]:
        """Run the machine from ``boot`` until a halt; returns the final report."""
        self.cur = boot
        try:
            boot.glet.switch()
        except ServerGone as e:
            self._server_gone(str(e))
        self.cur = None
        return self.finish()

    def finish(self) -> dict[str, Any]:
        self._charge()
        if self.stats_interval and self.clock.started:   # the series ends where the
            self._publish(last=True)                      # CPU stopped
        threads = []
        for ctx in list(self.contexts.values()):
            info = {"tid": ctx.tid, "name": ctx.name, "stack": ctx.stack()[-12:]}
            try:
                info.update(self.describe(ctx))
            except Exception as e:  # noqa: BLE001
                info["describe_error"] = str(e)
            threads.append(info)
        report = {"id": self.id, "pid": os.getpid(), "halt": self.halted,
                  **self.counters.as_dict(),
                  "clock": dataclasses.asdict(self.clock.statistics()),
                  "bus": {"calls": self.bus.calls, "posts": self.bus.posts,
                          "wait_s": round(self.bus.wait_s, 4),
                          "read_points": self.bus.point,
                          "point_wait_s": round(self.bus.point_wait_s, 4),
                          "stalls": self.bus.stalls, "server_waits": self.bus.server_waits},
                  "chaos": self.chaos.statistics() if self.chaos is not None else None,
                  "threads": threads}
        try:
            report["kernel"] = self.final_report()
        except Exception as e:  # noqa: BLE001
            report["kernel"] = {"error": str(e)}
        return report
