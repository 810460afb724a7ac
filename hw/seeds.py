"""Every random choice of a run derives from its one seed, here (DESIGN.md decision 7).

A run has one seed (``run.seed``). Whatever needs randomness (the chaos of a CPU, a user
process's program, a kernel thread of the lock load, the runs of a stress campaign) asks
for a source by a *path* of names and numbers, and gets a ``random.Random`` seeded by a
stable hash of the seed and the path. Two paths never share a stream, the same path gives
the same stream on every host and in every version of Python, and adding a new consumer
changes nobody else's stream::

    rng = derive(seed, "chaos", cpu)        # hw/chaos.py
    rng = derive(seed, "proc", pid)         # a user process (through kernel/machine)
    s = derive_int(base, "campaign", i)     # the seed of run i of a campaign
"""

from __future__ import annotations

import hashlib
import random

SEED_MAX = (1 << 63) - 1


def derive_int(seed: int, *path: object) -> int:
    """A seed in 0..SEED_MAX derived from ``seed`` and ``path`` (stable everywhere)."""
    key = "/".join([str(int(seed)), *map(str, path)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & SEED_MAX


def derive(seed: int, *path: object) -> random.Random:
    """The random source of ``path`` in a run with seed ``seed``."""
    return random.Random(derive_int(seed, *path))
