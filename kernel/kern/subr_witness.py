"""The lock order WITNESS starts from, after FreeBSD ``kern/subr_witness.c``.

The machine checks lock order (``smp/machine/witness.py``: it sees every grant of every
CPU in its true order); what the order *is* belongs to the kernel, as ``order_lists[]``
belongs to subr_witness.c. The kernel registers it at boot, by the names its locks are
initialised with, together with the locks WITNESS's sleep rules make an exception for.

2002's order_lists, as far as this kernel has the locks: "Giant", "proctree", "allproc",
"process lock" (sleep locks, in that order); "sched lock", then "callout" and the free page
queue's spin mutex (spin locks, the sched lock first).
"""

from __future__ import annotations

from smp.kernel.machine import cpu as md

ORDER_LISTS = [
    ["Giant", "proctree", "allproc", "process lock"],
    ["sched lock", "callout"],
    ["sched lock", "vm page queue free mutex"],
]

# Giant may be held when an sx lock is taken and across a sleep (WITNESS's rules 6 and 7
# name it: `if (lock == &Giant.mtx_object) continue`).
EXEMPT = ["Giant"]

SCHED_LOCK = "sched lock"

# the class of each lock the order names (the ones a run never takes are known by it only)
CLASSES = {"Giant": "sleep mutex", "proctree": "sx", "allproc": "sx",
           "process lock": "sleep mutex", "sched lock": "spin mutex", "callout": "spin mutex",
           "vm page queue free mutex": "spin mutex"}


def witness_register() -> None:
    """BSP, at boot: the static order, the exemptions, and which lock is the scheduler's
    (sleep queues may be used only holding it)."""
    md.register("lock_order", {"chains": ORDER_LISTS, "exempt": EXEMPT, "classes": CLASSES})
    md.register("scheduler_lock", SCHED_LOCK)
