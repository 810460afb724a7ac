"""Chaos: seeded random delays that widen race windows.

The interleavings between CPU processes are real and cannot be seeded; what the simulator
can do is make the dangerous ones likelier. At each chaos point (a lock acquire or
release, a shared load or store) a CPU may, with a probability set by the level, stall for
a random while (as a CPU stalls on a cache miss or an SMI): the other CPUs run on, and a
window that is a few instructions wide in the C becomes milliseconds wide. The kernel adds
voluntary yields at its own safe points (``kernel/kern/kern_chaos.py``).

How long a stall lasts depends on the time model. In wall time a stall is host time
(``max_delay_us``): on the wall-time machine a request cost some 300 us of host time, so a
stall of up to 2 ms let the other CPUs make a few requests each. In virtual time a request
costs 10-60 us of simulated time (``cost.*``), and the same 2 ms would be worth some 25
requests: at chaos high a CPU would spend ~80 us stalled per request for 10-40 us of
work, the machine would do a third of its work per simulated second, and the races that
need a busy machine would close (on ``configs/stress.toml`` the hogs no longer filled
memory: 0-2 waits for memory per run instead of 22-30, and the ``prs_new`` window, which
opens only when a fork waits for memory, was crossed 7 times in ten campaigns instead of
28). So virtual time has its own stall length (``max_stall_us``), the same few requests
of the others: up to 400 us at high (5 requests' time on average), 60 us at low.

Every choice comes from one ``random.Random`` per CPU, seeded from the run's chaos seed
and the CPU id, so a rerun with the same seed makes the same choices at the same points
(the points themselves are reached in an order the host decides).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from smp.hw.protocol import Op
from smp.hw.seeds import derive


@dataclasses.dataclass(frozen=True)
class ChaosLevel:
    name: str
    p_delay: float          # probability of a stall at a chaos point
    max_delay_us: float     # longest stall in wall time (host time)
    max_stall_us: float     # longest stall in virtual time (simulated time)
    p_yield: float          # probability of a voluntary yield at a kernel safe point


LEVELS = {
    "off": ChaosLevel("off", 0.0, 0.0, 0.0, 0.0),
    "low": ChaosLevel("low", 0.02, 300.0, 60.0, 0.01),
    "high": ChaosLevel("high", 0.08, 2000.0, 400.0, 0.05),
}

# The requests at which a CPU may stall: lock operations and shared loads and stores.
CHAOS_OPS = frozenset({Op.ACQUIRE, Op.RELEASE, Op.LOAD, Op.LOADN, Op.STORE, Op.STOREN,
                       Op.SLEEP, Op.WAKEUP, Op.LIST_NEXT, Op.LIST_FIRST})


class Chaos:
    def __init__(self, level: str, seed: int, cpu: int) -> None:
        self.level = LEVELS[level]
        self.rng = derive(seed, "chaos", cpu)
        self.delays = 0
        self.yields = 0
        self.delay_s = 0.0

    @property
    def active(self) -> bool:
        return self.level.p_delay > 0 or self.level.p_yield > 0

    def point(self, op: int, before_stall: Callable[[], None]) -> None:
        """A chaos point before request ``op``: maybe stall (``before_stall`` first: the
        bus sends what it has queued, so a stall delays this CPU, not its past)."""
        lv = self.level
        if lv.p_delay and op in CHAOS_OPS and self.rng.random() < lv.p_delay:
            d = self.rng.uniform(0.0, lv.max_delay_us) / 1e6
            self.delays += 1
            self.delay_s += d
            before_stall()
            time.sleep(d)

    def stall_ns(self, op: int) -> int:
        """Virtual time: the stall (simulated ns) at a chaos point before request ``op``,
        or 0; the same draws as :meth:`point`."""
        lv = self.level
        if lv.p_delay and op in CHAOS_OPS and self.rng.random() < lv.p_delay:
            self.delays += 1
            return int(self.rng.uniform(0.0, lv.max_stall_us) * 1000)
        return 0

    def want_yield(self) -> bool:
        lv = self.level
        if lv.p_yield and self.rng.random() < lv.p_yield:
            self.yields += 1
            return True
        return False

    def statistics(self) -> dict[str, float]:
        return {"level": self.level.name, "delays": self.delays, "yields": self.yields,
                "delay_s": round(self.delay_s, 4)}
