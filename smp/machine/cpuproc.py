"""The CPU process: what runs in each simulated CPU's OS process.

``cpu_main`` is the target the launcher forks for each CPU. It creates its ZeroMQ context
*after* the fork (a context inherited across fork is dead: docs/TRANSPORT.md), says hello to the
server, waits for the machine to start, boots the kernel on this CPU and runs it until the
server halts the machine; then it sends its final report (counters, every thread's state
and stack) and exits.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

from smp.hw.bus import Bus, BusError, ServerGone, Stopped
from smp.hw.clock import Clock, VirtualClock
from smp.hw.cpu import Costs, Cpu
from smp.hw.protocol import Op
from smp.machine.proc_util import die_with_parent
from smp.machine.linecount import LineCounter, kernel_root, packed

START_TIMEOUT = 60.0


def costs_of(config: dict[str, Any]) -> Costs:
    """The costs of a CPU's work in virtual time (the ``cost.*`` keys, ns)."""
    return Costs(call_ns=int(config["cost.call"]), post_ns=int(config["cost.post"]),
                 page_ns=int(config["cost.page"]), switch_ns=int(config["cost.switch"]),
                 intr_ns=int(config["cost.intr"]))


def cpu_main(cpu_id: int, endpoint: str, config: dict[str, Any] | None, liveness: float,
             sysinits: tuple[Any, ...] = (), curve: dict[str, bytes] | None = None,
             pdeathsig: bool = True, start_timeout: float = START_TIMEOUT,
             replay: dict[int, int] | None = None, replay_limit: int | None = None,
             on_hello: Any = None, server_pid: int | None = None) -> None:
    """``curve``: the CURVE client keys for a server on another host (``smp cpu --join``);
    ``pdeathsig`` False for a CPU that is the top process of its host (nothing to die
    with: the server's silence ends it). ``config`` None: a CPU that joins from another
    host (``smp.run.remote``); it takes the run's config, its start timeout and the server's
    clock from the HELLO reply. ``start_timeout``: how long to wait for the machine to
    start after HELLO (longer when other CPUs are still to join). ``replay``: this CPU's
    read log from a record (read point -> messages read there): a replay;
    ``replay_limit``: the last read point the record knows, if it was cut short. ``on_hello``:
    called once the server has taken this CPU's HELLO. ``server_pid``: the server's process,
    on this host (the launcher's CPUs): a silent server that still lives is waited for
    longer (``smp.hw.bus``).

    Exit status: 0 halted cleanly; 1 the server refused this CPU's HELLO (the reason is
    printed); 3 the server went away; 4 a crash."""
    if pdeathsig:
        die_with_parent()
    if sysinits:
        from smp.kernel.sys.kernel import SYSINIT
        for si in sysinits:
            SYSINIT(si.name, si.subsystem, si.order, si.func, si.udata, si.percpu)
    code = 0
    bus = None
    try:
        # Import the kernel before saying hello: once hello'd, a CPU that sends nothing for
        # PEER_LOST_S is reported unresponsive, and 32 CPUs importing at once on 2 cores
        # can take that long.
        import smp.kernel.conf  # noqa: F401
        # a CPU that joins from another host has an identity of its own, so that a
        # second one for the same id reaches the server (and is refused there, saying
        # why) instead of being dropped by ZeroMQ as a duplicate identity
        ident = f"cpu{cpu_id}" if config is not None else f"cpu{cpu_id}.{os.getpid()}"
        bus = Bus(endpoint, ident, liveness=liveness, curve=curve, server_pid=server_pid)
        t_send = time.monotonic()
        try:
            info = bus.hello("cpu", cpu_id, os.getpid())
        except BusError as e:
            raise _Refused(f"the server refused this CPU: {e}") from None
        if config is None:                    # joined from another host: see smp.run.remote
            config, start_timeout = _joined(info, t_send, bus)
        if on_hello is not None:
            on_hello()
        bus.start_heartbeat()
        hw = make_cpu(cpu_id, bus, config, replay, replay_limit)
        report = run_cpu(hw, config, start_timeout)
        bus.call(Op.REPORT, 0, "", "final", report)      # waits: nothing is lost
        bus.post(Op.BYE, 0, "", "halted")
    except _Refused as e:
        sys.stderr.write(f"cpu{cpu_id}: {e}\n")
        code = 1
    except ServerGone as e:
        sys.stderr.write(f"cpu{cpu_id}: {e}; stopping\n")
        code = 3
    except Stopped as e:
        sys.stderr.write(f"cpu{cpu_id}: stopped before the machine started: {e}\n")
        code = 3
    except BaseException:  # noqa: BLE001 - report, then leave without hanging
        traceback.print_exc()
        code = 4
    finally:
        if bus is not None:
            bus.close(linger_ms=500)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)        # greenlets of halted threads are dropped, never resumed


def make_cpu(cpu_id: int, bus: Bus, config: dict[str, Any],
             replay: dict[int, int] | None = None, replay_limit: int | None = None) -> Cpu:
    """The CPU ``config`` describes, on ``bus``: its clock (virtual or wall), what it
    records or replays, its costs and chaos."""
    virtual = config["machine.time"] == "virtual"
    clock: Clock | VirtualClock
    if virtual:
        clock = VirtualClock(int(config["machine.hz"]))
        if replay is not None:
            bus.replay, bus.replay_limit = replay, replay_limit
        else:
            bus.horizon = 0                     # until the server says how far to run
        if replay is None and config["run.record"]:
            bus.log_reads(lambda log: bus.send_control(Op.REPORT, "reads",
                                                       [log, -1, bus.point]))
    else:
        clock = Clock(int(config["machine.hz"]), float(config["machine.speed"]))
    hw = Cpu(cpu_id, bus, clock, float(config["run.stats_interval"]), costs_of(config))
    if config["debug.chaos"] != "off":
        from smp.hw.chaos import Chaos
        seed = int(config["debug.chaos_seed"]) or int(config["run.seed"])
        hw.chaos = Chaos(str(config["debug.chaos"]), seed, cpu_id)
    return hw


def run_cpu(hw: Cpu, config: dict[str, Any], start_timeout: float) -> dict[str, Any]:
    """Wait for the machine to start, boot the kernel on this CPU and run it until the
    machine halts; the CPU's final report (its read log, if it records, sent ahead)."""
    from smp.kernel.conf import boot
    bus, clock = hw.bus, hw.clock
    virtual = config["machine.time"] == "virtual"
    deadline = time.monotonic() + start_timeout
    while not clock.started and not hw.halted:
        if time.monotonic() > deadline:
            raise ServerGone(f"the machine did not start within {start_timeout:.0f} s")
        if virtual:
            bus.wait_start(0.5)                 # START, and not one message more
        else:
            bus.poll_events(0.5)
        hw._absorb()
    counter = LineCounter(kernel_root()) if config["debug.coverage"] else None
    if counter is not None:
        # stats samples are taken every run.stats_interval of host time: the kernel
        # lines they run are not counted, so that a replay counts what the run did
        hw.sample = counter.uncounted(hw.sample)          # type: ignore[method-assign]
        counter.start()
    report = hw.run(boot(hw, config)) if not hw.halted else hw.finish()
    if counter is not None:
        report["coverage"] = packed(counter.stop())
    bus.stopped = None                          # a replay's STOP: stopped, now report
    if bus.read_log is not None:
        bus.send_control(Op.REPORT, "reads", [bus.read_log, bus.point, bus.point])
        bus.read_log = None
    return report


class _Refused(Exception):
    """The server refused this CPU's HELLO (the message says why)."""


def _joined(info: dict[str, Any], t_send: float, bus: Bus) -> tuple[dict[str, Any], float]:
    """What a joining CPU learns from the HELLO reply: the run's resolved config, how long
    to wait for the start, and the server's clock (mapped onto ours: half a round trip
    of error). A different version of smp is refused: the kernels would differ."""
    from smp import __version__
    if info.get("version") != __version__ or "config" not in info:
        raise ServerGone(f"the server runs smp {info.get('version', '?')}, this CPU "
                         f"{__version__}: install the same version on both hosts")
    t_recv = time.monotonic()
    bus.clock_offset = (t_send + t_recv) / 2 - float(info["now"])
    return dict(info["config"]), float(info.get("start_timeout", START_TIMEOUT))

