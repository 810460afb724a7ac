"""The kernel a run ran: every source file's digest, which a recorded run keeps in its
record's header (``hw/record.py``), so that ``smp replay`` can say before it starts that the
kernel changed since the recording (``smp.run.replay``). The launcher takes the digests
when it starts a recorded run (``smp.run.launcher``)."""

from __future__ import annotations

import hashlib
import os


def kernel_sources() -> dict[str, str]:
    """Every source file of the kernel (relative to ``kernel/``) and its SHA-256's first
    12 hex digits, as a record's header keeps them: a replay can say before it starts
    that the kernel changed since the recording (a divergence will follow where it
    matters)."""
    root = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "kernel"))           # smp/kernel, an install's too
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:12]
                out[os.path.relpath(path, root).replace(os.sep, "/")] = digest
    return out


def source_changes(recorded: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The kernel's files that differ from the recording's (changed, new, gone), or []
    (also for a record that kept none)."""
    if not recorded:
        return []
    return sorted(f for f in set(recorded) | set(now) if recorded.get(f) != now.get(f))
