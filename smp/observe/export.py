"""``smp report RUN_DIR --format csv``: a finished run's tables as CSV, for spreadsheets and
scripts (``--format json`` prints report.json as is); ``smp report RUN_DIR --table T`` the
same tables as text (every row; ``series`` is CSV only).

Tables (``--table``):

* ``cpus`` (default): one row per CPU from report.json: ticks per mode and their shares,
  context switches, locks, memory requests, IPIs, interrupts;
* ``locks``: one row per lock name (acquisitions, contested, CPUs seen, longest hold, wait);
* ``profile``: LOCK_PROFILING's rows (per lock and acquisition site, host microseconds);
* ``series``: the time series, one row per CPU sample of stats.jsonl with its cumulative
  counters (kernel counters as ``kernel.<name>``).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, TextIO

from smp.observe.monitor import MODE_ORDER, PROFILE_COLUMNS

TABLES = ("cpus", "locks", "profile", "series")
CPU_COUNTERS = ("ctxsw_vol", "ctxsw_invol", "lock_acquires", "lock_contested", "mem_ops",
                "ipis_sent", "ipis_received", "interrupts")
SERIES_COLUMNS = ("wall", "sim", "cpu", "pid", *(f"ticks.{m}" for m in MODE_ORDER),
                  *CPU_COUNTERS, "spin_wait_s", "sleep_wait_s", "bus_calls", "bus_posts",
                  "bus_wait_s")


def _cpus(report: dict[str, Any]) -> tuple[list[str], Iterable[dict[str, Any]]]:
    cols = ["cpu", "pid", *(f"ticks.{m}" for m in MODE_ORDER),
            *(f"pct.{m}" for m in MODE_ORDER), *CPU_COUNTERS]
    rows = []
    for c in report.get("cpus", []):
        t = c.get("ticks") or {}
        total = sum(int(t.get(m, 0)) for m in MODE_ORDER)
        row = {"cpu": c.get("id"), "pid": c.get("pid")}
        for m in MODE_ORDER:
            row[f"ticks.{m}"] = int(t.get(m, 0))
            row[f"pct.{m}"] = round(100.0 * int(t.get(m, 0)) / total, 2) if total else 0.0
        row.update({k: c.get(k, 0) for k in CPU_COUNTERS})
        rows.append(row)
    return cols, rows


def _locks(report: dict[str, Any]) -> tuple[list[str], Iterable[dict[str, Any]]]:
    cols = ["name", "acquires", "contested", "cpus_seen", "max_hold_us", "wait_us_total"]
    return cols, ({**r, "cpus_seen": len(r.get("cpus_seen") or [])}
                  for r in report.get("locks", []))


def _profile(report: dict[str, Any]) -> tuple[list[str], Iterable[dict[str, Any]]]:
    cols = ["lock", "site", *PROFILE_COLUMNS[:-1]]
    return cols, ({**r, "lock": r.get("name")} for r in report.get("lock_profile", []))


def _series(run_dir: str) -> tuple[list[str], Iterable[dict[str, Any]]]:
    recs = []
    kernel: set[str] = set()
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("type") != "cpu":
                continue
            row = {k: rec.get(k) for k in SERIES_COLUMNS if not k.startswith("ticks.")}
            for m in MODE_ORDER:
                row[f"ticks.{m}"] = (rec.get("ticks") or {}).get(m, 0)
            for k, v in (rec.get("kernel") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[f"kernel.{k}"] = v
                    kernel.add(f"kernel.{k}")
            recs.append(row)
    recs.sort(key=lambda r: (r.get("wall") or 0.0, r.get("cpu") or 0))
    return [*SERIES_COLUMNS, *sorted(kernel)], recs


def write_csv(run_dir: str, report: dict[str, Any], table: str, out: TextIO) -> None:
    """Write ``table`` of the run as CSV (a header row, then one row per item)."""
    if table == "cpus":
        cols, rows = _cpus(report)
    elif table == "locks":
        cols, rows = _locks(report)
    elif table == "profile":
        cols, rows = _profile(report)
    elif table == "series":
        cols, rows = _series(run_dir)
    else:
        raise ValueError(f"unknown table {table!r} (known: {', '.join(TABLES)})")
    w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", restval=0,
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


def text_table(report: dict[str, Any], table: str) -> str:
    """``table`` of the run as text, every row, as wide as it needs (rows never cut):
    ``cpus`` as the summary shows them, ``locks`` every lock by wait, ``profile`` as
    FreeBSD's ``debug.lock.prof.stats`` (``max wait_max total wait_total count avg
    wait_avg cnt_hold cnt_lock name``, the name ``file:line (class:lock)``)."""
    from rich.console import Console
    from rich.table import Table
    from smp.observe.summary import cpu_table, lock_rows, lock_table, render
    if table == "cpus":
        t: Table = cpu_table(report)
    elif table == "locks":
        t = lock_table(lock_rows(report))
    elif table == "profile":
        classes = {r.get("name"): r.get("class") for r in report.get("locks") or []}
        t = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False,
                  header_style="none")
        for c in PROFILE_COLUMNS:
            t.add_column(c, justify="left" if c == "name" else "right", no_wrap=True)
        for r in report.get("lock_profile") or []:
            cls = classes.get(r.get("name")) or "lock"
            t.add_row(*(f"{float(r.get(c) or 0):.0f}" for c in PROFILE_COLUMNS[:-1]),
                      f"{r.get('site')} ({cls}:{r.get('name')})")
    else:
        raise ValueError(f"no text form of table {table!r} (known: cpus, locks, profile)")
    width = max(80, Console(width=1000).measure(t).maximum)
    return render([t], width)
