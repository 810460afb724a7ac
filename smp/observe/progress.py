"""Progress: of ``smp run`` (on a terminal and off it) and of ``smp stress``.

``RunProgress``, a launcher monitor (see ``run_machine``'s ``monitors``): it reads the
same stats stream that becomes ``stats.jsonl`` and redraws, at most four times a second,
two things on standard error: simulated time of the total with a bar, the wall time spent
and an ETA (from the simulated seconds per wall second seen so far), and each CPU's
utilisation (the share of its ticks not idle, over its samples of the last two wall
seconds) with a small bar. The launcher's log lines are printed above it while it shows,
and it disappears when the run stops, before the summary is printed. The CLI uses it only
when standard error is a terminal. Rendering is Rich's (``Live``, ``ProgressBar``).

``PlainRunProgress``, the same monitor off a terminal (a pipe, a log file, CI): a plain line
every few simulated seconds (``sim 5.0 of 20 s (25%), wall 0:11, ETA 0:33``), so that a long
run shows it is alive without cursor tricks.

``CampaignProgress``: ``smp stress``'s view of a campaign, from its start: on a terminal a
Rich progress bar with the runs done of the total, the failing runs, the machines running,
the rate and an ETA; off a terminal a plain line at the start and then every
``PLAIN_EVERY_S`` wall seconds (and one at the end).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.columns import Columns
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from smp.observe.monitor import cpu_rates

REDRAW_S = 0.25
PLAIN_EVERY_S = 10.0     # off a terminal: a campaign's status line this often (wall s)
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


class PlainRunProgress:
    """``smp run`` off a terminal: one line on ``out`` every ``every`` simulated seconds
    (default: 5, or a twentieth of the run if that is longer)."""

    def __init__(self, duration: float, speed: float, every: float | None = None,
                 out: Any = None) -> None:
        self.duration = duration
        self.speed = speed
        self.every = every if every is not None else max(5.0, duration / 20)
        self.out = out
        self.next = self.every
        self.t0 = time.monotonic()
        self.first: tuple[float, float] | None = None
        self.sim: dict[int, float] = {}

    def started(self, live: dict[str, Any]) -> None:
        self.t0 = time.monotonic()

    def record(self, rec: dict[str, Any]) -> None:
        if rec.get("type") != "cpu" or not isinstance(rec.get("cpu"), int):
            return
        self.sim[rec["cpu"]] = float(rec.get("sim", 0.0))
        now = time.monotonic()
        sim = min(self.sim.values())          # the machine is as far as its slowest CPU
        if self.first is None:
            self.first = (sim, now)
        if sim < self.next or sim >= self.duration:
            return
        while self.next <= sim:
            self.next += self.every
        rate = self.speed
        if now - self.first[1] > 1.0 and sim > self.first[0]:
            rate = (sim - self.first[0]) / (now - self.first[1])
        eta = max(self.duration - sim, 0.0) / rate if rate > 0 else None
        import sys
        print(f"sim {sim:.1f} of {self.duration:g} s ({100 * sim / self.duration:.0f}%), "
              f"wall {_clock(now - self.t0)}, ETA {_clock(eta) if eta is not None else '?'}",
              file=self.out or sys.stderr, flush=True)

    def close(self) -> None:
        pass


def campaign_line(p: Any) -> str:
    """One plain status line of a campaign (``p``: smp.hunt.stress.Progress)."""
    eta = f", ETA {_clock(p.eta)}" if p.eta is not None and p.done < p.total else ""
    return (f"stress: {p.done}/{p.total} runs, {p.failing} failing, {p.running} running, "
            f"{p.rate:.1f} runs/min, wall {_clock(p.elapsed)}{eta}")


class CampaignProgress:
    """The progress of ``smp stress``: a bar on a terminal, plain lines otherwise. Call
    it with each ``smp.hunt.stress.Progress``; ``close()`` at the end."""

    def __init__(self, tty: bool, console: Console | None = None, out: Any = None,
                 every: float = PLAIN_EVERY_S) -> None:
        self.tty = tty
        self.out = out
        self.every = every
        self.last_line = -float("inf")
        self.last: Any = None
        self.printed: Any = None
        self.bar: Progress | None = None
        self.task: Any = None
        if tty:
            self.bar = Progress(
                TextColumn("stress"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("runs  [bold]{task.fields[failing]}[/] failing  "
                           "{task.fields[running]} running  {task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                console=console or Console(stderr=True), transient=False,
                auto_refresh=True, refresh_per_second=4)

    def __call__(self, p: Any) -> None:
        self.last = p
        if self.bar is not None:
            fields = {"failing": p.failing, "running": p.running,
                      "rate": f"{p.rate:.1f} runs/min",
                      "eta": f"ETA {_clock(p.eta)}" if p.eta is not None
                      else "" if p.over else "ETA ?"}
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("stress", total=p.total, completed=p.done,
                                              **fields)
            else:
                self.bar.update(self.task, completed=p.done, **fields)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            self._line(p)

    def _line(self, p: Any) -> None:
        import sys
        self.printed = p
        print(campaign_line(p), file=self.out or sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.refresh()
            self.bar.stop()
        elif self.last is not None and self.last != self.printed:
            self._line(self.last)           # where it ended
