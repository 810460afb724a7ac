"""SYSINIT: ordered boot-time initialisation, after FreeBSD ``sys/kernel.h``.

Each subsystem declares what runs at boot with ``SYSINIT(name, subsystem, order, func,
udata)``; ``mi_startup`` sorts the declarations by ``(subsystem, order)`` and runs them in
that order, so vm_glue's ``vm_init_limits`` runs at ``SI_SUB_VM_CONF`` and its
``scheduler``, "THIS MUST BE THE LAST INITIALIZATION ITEM", at ``SI_SUB_RUN_SCHEDULER``.

PORT: ``percpu=True`` marks an item that every CPU runs for itself (creating its idle
thread, its own kernel threads). In FreeBSD the BSP created those for everyone; here a
thread's stack lives in its CPU's process, so each CPU makes its own, in the same order.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable


class SI_SUB(enum.IntEnum):
    SI_SUB_DUMMY = 0x0000000
    SI_SUB_VM = 0x1000000
    SI_SUB_KMEM = 0x1800000
    SI_SUB_LOCK = 0x1B00000
    SI_SUB_CPU = 0x2100000
    SI_SUB_INTRINSIC = 0x2200000
    SI_SUB_VM_CONF = 0x2300000
    SI_SUB_RUN_QUEUE = 0x2400000
    SI_SUB_CREATE_INIT = 0x2500000
    SI_SUB_SCHED_IDLE = 0x2600000
    SI_SUB_INTR = 0x2800000
    SI_SUB_CLOCKS = 0x4800000
    SI_SUB_KTHREAD_INIT = 0xE000000
    SI_SUB_KTHREAD_PAGE = 0xE400000
    SI_SUB_KTHREAD_VM = 0xE800000
    SI_SUB_KTHREAD_IDLE = 0xEC00000
    SI_SUB_SMP = 0xF000000
    SI_SUB_RUN_SCHEDULER = 0xFFFFFFF


class SI_ORDER(enum.IntEnum):
    SI_ORDER_FIRST = 0x0000000
    SI_ORDER_SECOND = 0x0000001
    SI_ORDER_THIRD = 0x0000002
    SI_ORDER_MIDDLE = 0x1000000
    SI_ORDER_ANY = 0xFFFFFFF


@dataclasses.dataclass(frozen=True)
class SysInit:
    name: str
    subsystem: int
    order: int
    func: Callable[[Any], None]
    udata: Any
    percpu: bool


_sysinits: list[SysInit] = []


def SYSINIT(name: str, subsystem: int, order: int, func: Callable[[Any], None],
            udata: Any = None, percpu: bool = False) -> None:
    if any(s.name == name for s in _sysinits):
        return                      # a module imported twice declares once
    _sysinits.append(SysInit(name, int(subsystem), int(order), func, udata, percpu))


def sysinits(percpu: bool | None = None) -> list[SysInit]:
    """The declarations in boot order (stable for equal keys: declaration order)."""
    items = [s for s in _sysinits if percpu is None or s.percpu == percpu]
    return sorted(items, key=lambda s: (s.subsystem, s.order))
