"""``smp top``: a live view of a running machine, refreshed every second.

It subscribes to the run's stats stream (``live.json`` names the endpoint; see
smp/observe/monitor.py) and never sends the machine a request, so watching costs the machine
nothing beyond the stream it publishes anyway. Three tables:

* **cpu states**: per simulated CPU, the share of its ticks in each mode over the last
  refresh interval (cp_time style: user, nice, sys, intr, spin, idle add up to 100), then
  voluntary and involuntary context switches and IPIs sent and received per simulated s;
* **cpu activity**: lock acquisitions and contested ones per simulated s, milliseconds of
  spin and sleep-lock wait per simulated s, memory requests per simulated s and their
  mean host round trip (us), and the host process behind the CPU (pid, its real CPU %,
  RSS in MiB, from psutil);
* **locks**: the most contended acquisition sites with LOCK_PROFILING's columns
  (microseconds of the lock table's clock: simulated in virtual time, host in wall time;
  cumulative since boot, as ``debug.lock.prof.stats``);
* **processes** (``v`` switches the lock table for it): pid, state, the CPU, wchan, flags
  and the command, in angle brackets for a process swapped out (``<hog>``, as FreeBSD's
  top shows it), from the ``procs`` record of the server's sample (published by the
  kernel; "no process table published" when there is none).

Keys: ``q`` quits, ``s`` cycles the lock table's sort column, ``c`` the CPU order, ``p``
pauses (the stream is still read, so nothing piles up), ``v`` shows the processes or the
locks. The layout fits 80x24; wider
terminals get wider name columns. The UI is Textual (keys, resizing, any terminal
including over SSH); the tables are Rich renderables.

``smp top --once [--json]`` waits until every CPU has published twice (one interval to
show), prints one sample and exits, for scripts: every table, the lock sites with their
whole path, never cut (piped, the lines are as wide as they need to be).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psutil
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from smp.observe.monitor import (MODE_ORDER, PROFILE_COLUMNS, MachineView, NoLiveRun, Stream,
                         find_live_run, top_locks)

LOCK_SORTS = ("wait_total", "wait_max", "count", "total", "max", "wait_avg", "avg",
              "cnt_lock", "cnt_hold")
CPU_SORTS = ("cpu", "busy", "contested_s", "mem_s")
REFRESH_S = 1.0


def _num(v: Any, width: int = 6) -> str:
    """A count or microseconds, compact: 1234, 123K, 10.9M."""
    if v is None:
        return "-"
    v = float(v)
    for limit, div, suffix in ((1e5, 1, ""), (1e7, 1e3, "K"), (1e10, 1e6, "M"),
                               (float("inf"), 1e9, "G")):
        if abs(v) < limit:
            s = f"{v / div:.0f}{suffix}" if div == 1 or abs(v / div) >= 10 \
                else f"{v / div:.1f}{suffix}"
            return s.rjust(width)
    return str(v)


def _rate(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 100 else _num(v, 0)


def _table(*cols: tuple[str, str]) -> Table:
    t = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, header_style="bold",
              pad_edge=False, expand=False)
    for name, justify in cols:
        t.add_column(name, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                     overflow="ellipsis",
                     min_width=None if justify == "left" else len(name.split("\n")[-1]))
    return t


def _sorted_cpus(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    if key == "cpu":
        return rows
    return sorted(rows, key=lambda r: -float(r.get(key) or 0))


def states_table(rows: list[dict[str, Any]]) -> Table:
    t = _table(("cpu", "right"), *((m, "right") for m in MODE_ORDER),
               ("vcsw/s", "right"), ("icsw/s", "right"), ("ipi tx", "right"),
               ("ipi rx", "right"))
    for r in rows:
        pct = r.get("pct")
        cells = [f"{pct[m]:.1f}" for m in MODE_ORDER] if pct else ["-"] * len(MODE_ORDER)
        t.add_row(str(r["cpu"]), *cells, _rate(r.get("ctxsw_vol_s")),
                  _rate(r.get("ctxsw_invol_s")), _rate(r.get("ipis_sent_s")),
                  _rate(r.get("ipis_received_s")))
    return t


def activity_table(rows: list[dict[str, Any]]) -> Table:
    t = _table(("cpu", "right"), ("lock/s", "right"), ("cont/s", "right"),
               ("spin ms", "right"), ("slp ms", "right"), ("mem/s", "right"),
               ("rtt us", "right"), ("pid", "right"), ("cpu%", "right"), ("rss M", "right"))
    for r in rows:
        h = r.get("host") or {}
        cpu_pct = h.get("cpu_percent")
        rss = h.get("rss")
        t.add_row(str(r["cpu"]), _rate(r.get("locks_s")), _rate(r.get("contested_s")),
                  _rate(r.get("spin_ms")), _rate(r.get("sleep_ms")), _rate(r.get("mem_s")),
                  _rate(r.get("rtt_us")), str(r.get("pid") or "-"),
                  "-" if cpu_pct is None else f"{cpu_pct:.0f}",
                  "-" if rss is None else f"{rss / 2**20:.0f}")
    return t


def locks_table(locks: list[dict[str, Any]], sort: str, full_sites: bool = False) -> Table:
    """LOCK_PROFILING's columns; the last is ``lock @ site``. ``full_sites`` (``--once``):
    the site's whole path, and a name too long for the line is folded, never cut."""
    heads = {"wait_max": "wait\nmax", "wait_total": "wait\ntotal", "wait_avg": "wait\navg",
             "cnt_hold": "cnt\nhold", "cnt_lock": "cnt\nlock"}
    cols = []
    for c in PROFILE_COLUMNS:
        label = heads.get(c, c)
        if c == sort:
            label += "*"
        cols.append((label, "left" if c == "name" else "right"))
    t = _table(*cols)
    for col in t.columns[:-1]:
        col.min_width = 6                   # the numbers keep their width; names shrink
    if full_sites:
        t.columns[-1].no_wrap = False
        t.columns[-1].overflow = "fold"
    for r in locks:
        name = f"{r.get('lock')} @ {r.get('site')}" if full_sites and r.get("site") \
            else r["name"]
        t.add_row(*(_num(r[c]) for c in PROFILE_COLUMNS[:-1]), Text(name))
    return t


PROC_COLUMNS = (("PID", "right"), ("STATE", "left"), ("C", "right"), ("WCHAN", "left"),
                ("FLAGS", "left"), ("COMMAND", "left"))


def _flags(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:#x}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) or "-"
    return str(v) or "-"


def procs_table(procs: list[dict[str, Any]] | None) -> Table | Text:
    """The process list, as ps and FreeBSD's top show it: a swapped-out process's
    command in angle brackets (``<hog>``, top's way), its state, the CPU it is on or
    last ran on, what it sleeps on (wchan), its flags."""
    if procs is None:
        return Text("no process table published (the kernel publishes none in this "
                    "version)")
    t = _table(*PROC_COLUMNS)
    for p in sorted(procs, key=lambda p: int(p.get("pid") or 0)):
        comm = str(p.get("comm") or "?")
        cpu = p.get("cpu")
        t.add_row(str(p.get("pid", "?")), str(p.get("state") or "-"),
                  "-" if cpu is None or cpu < 0 else str(cpu),
                  str(p.get("wchan") or "-"), _flags(p.get("flags")),
                  f"<{comm}>" if p.get("swapped") else comm)
    return t


def memory_line(view: MachineView) -> Text:
    """Free pages; processes swapped out and in (vm_glue's swapout and swapin of a whole
    process) apart from pages written to swap and read back (any page, page faults
    included)."""
    m = view.memory()
    free = "-" if m["free_pages"] is None else f"{m['free_pages']}/{m['pages']}"
    return Text(f"mem: free {free} pages  swapped procs: out {m['swapouts']} in "
                f"{m['swapins']}  swap pages: out {m['pages_swapped_out']} in "
                f"{m['pages_swapped_in']}", no_wrap=True, overflow="ellipsis")


def title_line(view: MachineView, run_dir: str, ended: bool, paused: bool) -> Text:
    live = view.live
    state = "ENDED" if ended else ("PAUSED" if paused else
                                   ("waiting" if not view.rates else "live"))
    cfg = str(live.get("config") or "?").rsplit("/", 1)[-1]
    total = f"/{live['duration']:g}" if isinstance(live.get("duration"), (int, float)) else ""
    n = view.ncpus()
    return Text(f"[{state}] sim {view.sim_time():.1f}{total} s  {n} CPU{'s' if n != 1 else ''}"
                f"  {cfg} "
                f"seed {live.get('seed')}  rates per sim s  "
                f"{run_dir.rstrip('/').rsplit('/', 1)[-1]}", no_wrap=True, overflow="ellipsis")


def _launcher_gone(view: MachineView) -> bool:
    pid = view.live.get("launcher_pid")
    try:
        return not (isinstance(pid, int) and psutil.pid_exists(pid))
    except psutil.Error:
        return True


# -- the live view --------------------------------------------------------------------------
def make_app(run_dir: str, live: dict[str, Any], refresh_s: float = REFRESH_S) -> Any:
    """The Textual application (built here so that ``--once`` never imports Textual)."""
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.containers import VerticalScroll
    from textual.widgets import Footer, Static

    class TopApp(App[int]):
        CSS = """
        Screen { layout: vertical; }
        #title { height: 1; background: $primary; color: $text; }
        #cpus { height: auto; max-height: 60%; }
        #mem { height: 1; }
        #locks { height: 1fr; }
        #procs { height: 1fr; display: none; }
        """
        ENABLE_COMMAND_PALETTE = False
        BINDINGS = [Binding("q", "quit", "quit"), Binding("s", "sort", "sort locks"),
                    Binding("c", "cpu_order", "cpu order"), Binding("p", "pause", "pause"),
                    Binding("v", "view", "procs")]

        def __init__(self) -> None:
            super().__init__()
            self.view = MachineView(live)
            self.stream = Stream(live["stats"])
            self.sort = 0
            self.cpu_sort = 0
            self.paused = False
            self.show_procs = False
            self.ended = False
            self.ppid = os.getppid()

        def compose(self) -> ComposeResult:
            yield Static(id="title")
            with VerticalScroll(id="cpus"):
                yield Static(id="states")
                yield Static(id="activity")
            yield Static(id="mem")
            yield Static(id="locks")
            with VerticalScroll(id="procs"):
                yield Static(id="proctable")
            yield Footer()

        def on_mount(self) -> None:
            for pid in live.get("cpu_pids") or []:
                self.view.host.get(pid)            # start counting host CPU time
            self.set_interval(0.1, self.drain)
            self.set_interval(refresh_s, self.tick)
            self.render_view()

        def drain(self) -> None:
            for topic, rec in self.stream.poll(0):
                self.view.feed(topic, rec)

        def tick(self) -> None:
            if os.getppid() != self.ppid:      # whoever started us is gone (a lost
                self.exit(0)                   # terminal that sent no SIGHUP): so are we
                return
            if not self.ended and time.monotonic() - self.view.last_heard > 3.0:
                self.ended = _launcher_gone(self.view)
            if self.paused:
                self.query_one("#title", Static).update(
                    title_line(self.view, run_dir, self.ended, True))
                return
            self.view.mark()
            self.render_view()

        def render_view(self) -> None:
            rows = _sorted_cpus(self.view.cpus(), CPU_SORTS[self.cpu_sort])
            self.query_one("#title", Static).update(
                title_line(self.view, run_dir, self.ended, self.paused))
            self.query_one("#states", Static).update(states_table(rows))
            self.query_one("#activity", Static).update(activity_table(rows))
            self.query_one("#mem", Static).update(memory_line(self.view))
            sort = LOCK_SORTS[self.sort]
            self.query_one("#locks", Static).update(
                locks_table(top_locks(self.view.server, sort, 20), sort))
            self.query_one("#proctable", Static).update(procs_table(self.view.procs()))

        def action_view(self) -> None:
            """Switch between the lock table and the process list (the CPU tables and
            the memory line stay)."""
            self.show_procs = not self.show_procs
            self.query_one("#locks").display = not self.show_procs
            self.query_one("#procs").display = self.show_procs
            self.render_view()

        def action_sort(self) -> None:
            self.sort = (self.sort + 1) % len(LOCK_SORTS)
            self.render_view()

        def action_cpu_order(self) -> None:
            self.cpu_sort = (self.cpu_sort + 1) % len(CPU_SORTS)
            self.render_view()

        def action_pause(self) -> None:
            """Pause: what is shown stays as it is (only the title says so; rendering it
            again would take new host figures, psutil's CPU % of each process); resume:
            the view catches up at once."""
            self.paused = not self.paused
            if self.paused:
                self.query_one("#title", Static).update(
                    title_line(self.view, run_dir, self.ended, True))
            else:
                self.render_view()

        async def action_quit(self) -> None:
            self.exit(0)

        def on_unmount(self) -> None:
            self.stream.close()

    return TopApp()


# -- one sample, for scripts ------------------------------------------------------------------
def sample_once(live: dict[str, Any], timeout: float = 15.0) -> MachineView:
    """Read the stream until every CPU has an interval to show (or ``timeout`` passes)."""
    view = MachineView(live)
    ncpus = view.ncpus()
    for pid in live.get("cpu_pids") or []:
        view.host.get(pid)
    deadline = time.monotonic() + timeout
    with Stream(live["stats"]) as stream:
        while not view.ready(ncpus):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no interval from every CPU within {timeout:.0f} s "
                                   f"(have {sorted(view.rates)} of {ncpus})")
            for topic, rec in stream.poll(min(left, 0.5)):
                view.feed(topic, rec)
            view.mark()
    return view


def text_once(view: MachineView, run_dir: str) -> Group:
    rows = view.cpus()
    return Group(title_line(view, run_dir, False, False), states_table(rows), "",
                 activity_table(rows), "", memory_line(view), "",
                 locks_table(top_locks(view.server, "wait_total", 10), "wait_total",
                             full_sites=True), "", procs_table(view.procs()))


def once_console(group: Group, out: Any = None) -> Console:
    """A console for ``--once``: on a terminal its width (long names fold); piped, wide
    enough for every line (nothing is cut, whatever COLUMNS says)."""
    probe = Console(width=1000, file=out)
    need = max((probe.measure(r).maximum for r in group.renderables
                if not isinstance(r, str)), default=80)
    term = Console(file=out)
    width = max(term.width, 80) if term.is_terminal else max(80, need)
    return Console(width=width, file=out)


def main(run_dir: str | None, once: bool, as_json: bool, base: str = "runs",
         timeout: float = 15.0) -> int:
    if not timeout > 0:
        print(f"smp top: --timeout must be a positive number of seconds, got {timeout:g}",
              file=sys.stderr)
        return 2
    try:
        rdir, live = find_live_run(run_dir, base)
    except NoLiveRun as e:
        print(f"smp top: {e}", file=sys.stderr)
        return 2
    if not once and not (sys.stdout.isatty() and sys.stdin.isatty()):
        print("smp top: not a terminal: printing one sample (use --once for scripts)",
              file=sys.stderr)
        once = True
    if once:
        try:
            view = sample_once(live, timeout)
        except TimeoutError as e:
            print(f"smp top: {rdir}: {e}", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps({"run_dir": rdir, **view.snapshot()}, indent=1))
        else:
            group = text_once(view, rdir)
            once_console(group).print(group)
        return 0
    app = make_app(rdir, live)
    code = app.run()
    return int(code or 0)
