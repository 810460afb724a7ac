"""What the machine publishes of the VM's page counts, after FreeBSD ``vm/vm_meter.c``.

FreeBSD exports ``struct vmmeter cnt`` through sysctl (``vm.stats.vm.v_free_count``, ...),
which is what top and systat read. Here the kernel tells the machine, once at boot, which
kernel object holds the counts and which field is which; the machine then publishes them
with every stats sample (free pages, the pageout thresholds) without knowing the struct.
"""

from __future__ import annotations

from smp.kernel.machine import cpu as md

# the machine's names for the counts -> struct vmmeter's fields
VMSTATS = {
    "pages": "v_page_count",
    "free": "v_free_count",
    "wired": "v_wire_count",
    "active": "v_active_count",
    "inactive": "v_inactive_count",
    "cache": "v_cache_count",
    "free_reserved": "v_free_reserved",
    "free_min": "v_free_min",
    "free_severe": "v_free_severe",
    "free_target": "v_free_target",
    "inactive_target": "v_inactive_target",
}


def vmmeter_register() -> None:
    """BSP, at boot: the symbol ``cnt`` (vm_page_startup publishes it) holds the counts."""
    md.register("vmstats", {"symbol": "cnt", "fields": VMSTATS})
