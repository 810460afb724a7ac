"""``live.json``: what a running machine says of itself, and whether it still runs.

While a run is alive its directory holds ``live.json`` (the launcher writes it once every
process has started, and removes it at the end): the stats stream's endpoint, the pids of
the launcher, the server and the CPUs, the config and the seed, and the launcher's start
time. ``smp top``, ``smp monitor`` and ``smp run --force`` read it. A launcher killed
with SIGKILL leaves it behind, so a reader trusts it only if the launcher it names is
alive and is the same process (its start time matches: pids are reused) and its server is
alive (:func:`live_pids_alive`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import psutil

LIVE_JSON = "live.json"


def write_live(path: str, info: dict[str, Any]) -> None:
    """Write ``info`` to ``path`` whole, then rename it into place, so that a reader
    never finds it half written. OSError if it cannot be written (nothing is left)."""
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(path + ".tmp", path)
    except OSError:
        try:
            os.unlink(path + ".tmp")
        except OSError:
            pass
        raise


def read_live_json(run_dir: str) -> dict[str, Any] | None:
    """``run_dir/live.json`` as it is (alive or not), or None."""
    try:
        with open(os.path.join(run_dir, LIVE_JSON)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def process_alive(pid: Any, started: Any = None) -> bool:
    """Whether ``pid`` names a live process (not a zombie) that, if ``started`` is given,
    started then (within a second): the process that wrote it, not one that took its pid."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return not isinstance(started, (int, float)) or abs(p.create_time() - started) < 1.0
    except psutil.Error:
        return False


def live_pids_alive(info: dict[str, Any]) -> bool:
    """Whether the machine a live.json describes still runs: its launcher (the same
    process: its start time matches, where live.json has it) and its server are alive."""
    return (process_alive(info.get("launcher_pid"), info.get("launcher_started"))
            and ("server_pid" not in info or process_alive(info.get("server_pid"))))


def launcher_started() -> float:
    """This process's start time, as live_pids_alive compares it."""
    return float(psutil.Process().create_time())
