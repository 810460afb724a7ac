"""System V shared memory, after FreeBSD ``kern/sysv_shm.c``: only the hook fork calls.

PORT: this kernel has no shared memory segments, so a vmspace's ``vm_shm`` is never set and
``shmfork`` has nothing to copy; it stays because ``vm_forkproc`` calls it.
"""

from __future__ import annotations

from typing import Any


def shmfork(p1: Any, p2: Any) -> None:
    """Give the child the parent's segments: there are none."""
