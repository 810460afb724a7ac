"""The CPU process: what runs in each simulated CPU's OS process.

``cpu_main`` is the target the launcher forks for each CPU. It creates its ZeroMQ context
*after* the fork (a context inherited across fork is dead: TRANSPORT.md), says hello to the
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

from hw.bus import Bus, ServerGone
from hw.clock import Clock
from hw.cpu import Cpu
from hw.protocol import Op
from smp.proc_util import die_with_parent

START_TIMEOUT = 60.0


def cpu_main(cpu_id: int, endpoint: str, config: dict[str, Any], liveness: float,
             sysinits: tuple[Any, ...] = (), curve: dict[str, bytes] | None = None,
             pdeathsig: bool = True) -> None:
    """``curve``: the CURVE client keys for a server on another host (``smp cpu --join``);
    ``pdeathsig`` False for a CPU that is the top process of its host (nothing to die
    with: the server's silence ends it)."""
    if pdeathsig:
        die_with_parent()
    if sysinits:
        from kernel.sys.kernel import SYSINIT
        for si in sysinits:
            SYSINIT(si.name, si.subsystem, si.order, si.func, si.udata, si.percpu)
    code = 0
    bus = None
    try:
        # Import the kernel before saying hello: once hello'd, a CPU that sends nothing for
        # PEER_LOST_S is reported unresponsive, and 32 CPUs importing at once on 2 cores
        # can take that long.
        from kernel.kern.init_main import boot
        bus = Bus(endpoint, f"cpu{cpu_id}", liveness=liveness, curve=curve)
        bus.hello("cpu", cpu_id, os.getpid())
        bus.start_heartbeat()
        clock = Clock(int(config["machine.hz"]), float(config["machine.speed"]))
        hw = Cpu(cpu_id, bus, clock, float(config["run.stats_interval"]))
        if config["debug.chaos"] != "off":
            from hw.chaos import Chaos
            seed = int(config["debug.chaos_seed"]) or int(config["run.seed"])
            hw.chaos = Chaos(str(config["debug.chaos"]), seed, cpu_id)
        deadline = time.monotonic() + START_TIMEOUT
        while not clock.started and not hw.halted:
            if time.monotonic() > deadline:
                raise ServerGone(f"the machine did not start within {START_TIMEOUT:.0f} s")
            bus.poll_events(0.5)
            hw._absorb()
        report = hw.run(boot(hw, config)) if not hw.halted else hw.finish()
        bus.call(Op.REPORT, 0, "", "final", report)      # waits: nothing is lost
        bus.post(Op.BYE, 0, "", "halted")
    except ServerGone as e:
        sys.stderr.write(f"cpu{cpu_id}: {e}; stopping\n")
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
