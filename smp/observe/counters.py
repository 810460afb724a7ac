"""What each kernel counter counts, for people: the help text of ``smp_kernel_<name>_total``
in the Prometheus metrics, and wherever a counter is explained.

The kernel registers its counters' descriptions at boot (``counters``: see the kernel's
``kern/subr_counter.py``); the server publishes them with its samples and in the report.
Every counter is a number of events since boot, so the unit is the event. A counter the
kernel does not describe gets a generic text.
"""

from __future__ import annotations

from typing import Any


def kernel_counter_help(name: str, registered: dict[str, Any] | None = None) -> str:
    """``name``'s help text, with its unit, from the kernel's registered descriptions."""
    reg = registered or {}
    text = (reg.get("help") or {}).get(name)
    if text is None:
        for prefix, fmt in (reg.get("prefix_help") or {}).items():
            if name.startswith(prefix):
                text = str(fmt).format(rest=name[len(prefix):])
                break
        else:
            text = f"kernel events counted as {name!r}"
    return f"Kernel counter: {text} (events since boot, per CPU)"


__all__ = ["kernel_counter_help"]
