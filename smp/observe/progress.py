"""The progress display of ``smp run`` on a terminal.

A launcher monitor (see ``run_machine``'s ``monitors``): it reads the same stats stream
that becomes ``stats.jsonl`` and redraws, at most four times a second, two things on
standard error: simulated time of the total with a bar, the wall time spent and an ETA
(from the simulated seconds per wall second seen so far), and each CPU's utilisation (the
share of its ticks not idle, over its samples of the last two wall seconds) with a small
bar. The launcher's log lines are printed above it while it shows, and it disappears when
the run stops, before the summary is printed. The CLI uses it only when standard error is
a terminal; otherwise ``smp run`` prints plain log lines as before. Rendering is Rich's
(``Live``, ``ProgressBar``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from smp.observe.monitor import cpu_rates

REDRAW_S = 0.25
WINDOW_S = 2.0           # utilisation is over the CPU's samples of the last ~2 wall s


def _clock(seconds: float) -> str:
    s = max(int(seconds + 0.5), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class RunProgress:
    """Simulated time, ETA and per-CPU utilisation, live on a terminal."""

    def __init__(self, duration: float, speed: float, ncpus: int,
                 console: Console | None = None) -> None:
        self.duration = duration
        self.speed = speed
        self.ncpus = ncpus
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.last: dict[int, dict[str, Any]] = {}
        self.window: dict[int, deque[dict[str, Any]]] = {}
        self.first: dict[str, float] | None = None
        self.busy: dict[int, float] = {}
        self.t0 = time.monotonic()
        self.drawn = 0.0

    # -- the launcher's monitor protocol -----------------------------------------------
    def started(self, live: dict[str, Any]) -> None:
        self.t0 = time.monotonic()
        self.live = Live(self.render(), console=self.console, auto_refresh=False,
                         transient=True, redirect_stdout=False, redirect_stderr=True)
        self.live.start()

    def record(self, rec: dict[str, Any]) -> None:
        if rec.get("type") != "cpu" or not isinstance(rec.get("cpu"), int):
            return
        cpu = rec["cpu"]
        win = self.window.setdefault(cpu, deque())
        win.append(rec)
        while len(win) > 2 and float(rec.get("wall", 0)) - float(win[1].get("wall", 0)) \
                >= WINDOW_S:
            win.popleft()
        if rec.get("sim", 0) > win[0].get("sim", 0):
            self.busy[cpu] = cpu_rates(win[0], rec)["busy"]
        self.last[cpu] = rec
        if self.first is None:
            self.first = {"sim": float(rec.get("sim", 0.0)), "t": time.monotonic()}
        now = time.monotonic()
        if self.live is not None and now - self.drawn >= REDRAW_S:
            self.drawn = now
            self.live.update(self.render(), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- drawing -----------------------------------------------------------------------
    def sim_time(self) -> float:
        return max((float(r.get("sim", 0.0)) for r in self.last.values()), default=0.0)

    def eta(self) -> float | None:
        """Wall seconds left, at the simulated pace seen so far (the configured speed
        until there is a pace to go by)."""
        sim = self.sim_time()
        rate = self.speed
        if self.first is not None:
            dt = time.monotonic() - self.first["t"]
            if dt > 1.0 and sim > self.first["sim"]:
                rate = (sim - self.first["sim"]) / dt
        return max(self.duration - sim, 0.0) / rate if rate > 0 else None

    def render(self) -> Group:
        sim = min(self.sim_time(), self.duration)
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True)
        head.add_column(width=24)
        head.add_column(no_wrap=True)
        eta = self.eta()
        head.add_row(Text(f"sim {sim:.1f} of {self.duration:g} s", style="bold"),
                     ProgressBar(total=self.duration, completed=sim, width=24),
                     Text(f"{100 * sim / self.duration:3.0f}%  wall "
                          f"{_clock(time.monotonic() - self.t0)}  ETA "
                          f"{_clock(eta) if eta is not None else '?'}"))
        cells = []
        for cpu in range(self.ncpus):
            busy = self.busy.get(cpu)
            cell = Table.grid(padding=(0, 1))
            cell.add_column(no_wrap=True)
            cell.add_column(width=8)
            cell.add_column(no_wrap=True, justify="right", width=4)
            cell.add_row(f"cpu{cpu}", ProgressBar(total=100, completed=busy or 0, width=8),
                         "-" if busy is None else f"{busy:.0f}%")
            cells.append(cell)
        return Group(head, Columns(cells, padding=(0, 2)))
