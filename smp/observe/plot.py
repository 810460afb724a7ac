"""``smp plot RUN_DIR``: charts of a run's time series (``stats.jsonl``), as PNG files in
the run directory, for people to look at.

* ``cpu_utilisation.png``: one panel per CPU, the share of its ticks in each mode over
  each sample interval, stacked (user at the bottom, idle on top), against simulated time;
* ``lock_contention.png``: for the locks with the most contested acquisitions, contested
  acquisitions per simulated second, and host seconds waited for each per host second
  (the mean number of waiting threads; a wait is counted when it ends, as LOCK_PROFILING
  counts it, so long waits make spikes);
* ``swap.png``: processes swapped out and in, pages swapped out and in (cumulative, summed
  over CPUs), and free pages against the pageout daemon's thresholds.

Every chart has a title naming the config and the seed, labelled axes with units and a
legend. Each PNG also carries its title and the names of its series as text chunks
(``Title``, ``Series``: a JSON list), so a script (or a test) can tell what was drawn
without reading pixels.

Server samples carry host (wall) time only; they are placed on the simulated time axis by
interpolating the CPUs' (wall, sim) pairs. Uses matplotlib's object API with the Agg
canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smp import __version__
from smp.observe.monitor import MODE_ORDER, cpu_rates, run_config

FILES = {"cpu": "cpu_utilisation.png", "locks": "lock_contention.png", "swap": "swap.png"}
MODE_COLOURS = {"user": "#2ca02c", "nice": "#17becf", "sys": "#d62728", "intr": "#ff7f0e",
                "spin": "#9467bd", "idle": "#d9d9d9"}
TOP_LOCKS = 5


class PlotError(Exception):
    """The run directory has nothing to plot (the message says why)."""


@dataclasses.dataclass
class Series:
    """A run's stats stream, split by source."""
    cpus: dict[int, list[dict[str, Any]]]
    server: list[dict[str, Any]]
    config: str
    seed: Any

    @property
    def label(self) -> str:
        return f"{self.config}, seed {self.seed}"

    def sim_of_wall(self, wall: Any) -> Any:
        """Simulated time at host time ``wall`` (interpolated from the CPUs' samples)."""
        pairs = sorted((r["wall"], r["sim"]) for rs in self.cpus.values() for r in rs)
        w, s = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        return np.interp(wall, w, s)


def load_series(run_dir: str) -> Series:
    path = os.path.join(run_dir, "stats.jsonl")
    cpus: dict[int, list[dict[str, Any]]] = {}
    server: list[dict[str, Any]] = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue                  # a line cut short by a killed launcher
                if rec.get("type") == "cpu" and isinstance(rec.get("cpu"), int):
                    cpus.setdefault(rec["cpu"], []).append(rec)
                elif rec.get("type") == "server":
                    server.append(rec)
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file (is {run_dir} a run directory?)") from None
    for rs in cpus.values():
        rs.sort(key=lambda r: r.get("sim", 0.0))
    if not any(len(rs) >= 2 for rs in cpus.values()):
        raise PlotError(f"{path}: fewer than two samples of any CPU: nothing to plot")
    server.sort(key=lambda r: r.get("wall", 0.0))
    config, seed = "?", "?"
    try:
        with open(os.path.join(run_dir, "report.json")) as f:
            rep = json.load(f)
        config, seed = rep.get("config") or "?", rep.get("seed", "?")
    except (OSError, json.JSONDecodeError):
        rc = run_config(run_dir)
        seed = rc.get("seed", "?")
    return Series(cpus, server, os.path.basename(str(config)), seed)


def _finish(fig: Figure, title: str, series_names: list[str]) -> Figure:
    fig.suptitle(title, fontsize=12)
    fig.smp_series = series_names  # type: ignore[attr-defined]
    fig.smp_title = title  # type: ignore[attr-defined]
    return fig


# -- the charts ------------------------------------------------------------------------------
def cpu_figure(s: Series) -> Figure:
    """Per-CPU utilisation stacked by state over time."""
    cpus = sorted(s.cpus)
    ncols = 1 if len(cpus) <= 4 else (2 if len(cpus) <= 8 else 4)
    nrows = -(-len(cpus) // ncols)
    fig = Figure(figsize=(5.5 * ncols + 2.0, 1.9 * nrows + 1.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for i, cpu in enumerate(cpus):
        ax = axes[i // ncols][i % ncols]
        rs = s.cpus[cpu]
        rates = [cpu_rates(a, b) for a, b in zip(rs, rs[1:]) if b["sim"] > a["sim"]]
        t = [r["sim"] for r in rates]
        ax.stackplot(t, *[[r["pct"][m] for r in rates] for m in MODE_ORDER],
                     labels=MODE_ORDER, colors=[MODE_COLOURS[m] for m in MODE_ORDER],
                     step="pre")
        ax.set_ylim(0, 100)
        ax.set_title(f"cpu {cpu}", fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("% of ticks")
        if i // ncols == nrows - 1 or i + ncols >= len(cpus):
            ax.set_xlabel("simulated time (s)")
    for j in range(len(cpus), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", title="mode")
    return _finish(fig, f"Per-CPU utilisation by state: {s.label}", list(MODE_ORDER))


def lock_figure(s: Series) -> Figure:
    """Contested acquisitions and wait time over time, for the most contended locks."""
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    names: list[str] = []
    if len(s.server) >= 2:
        last = {r["name"]: r for r in s.server[-1].get("locks") or []}
        names = [n for n, r in sorted(last.items(), key=lambda kv: -kv[1]["contested"])
                 if r["contested"] > 0][:TOP_LOCKS]
        wall = np.array([r["wall"] for r in s.server])
        t = s.sim_of_wall(wall)
        for name in names:
            rows = [{x["name"]: x for x in r.get("locks") or []}.get(name, {})
                    for r in s.server]
            cont = np.array([float(x.get("contested", 0)) for x in rows])
            wait = np.array([float(x.get("wait_us_total", 0)) for x in rows])
            dt, dw = np.diff(t), np.diff(wall)
            ok = (dt > 0) & (dw > 0)
            ax1.step(t[1:][ok], np.diff(cont)[ok] / dt[ok], where="pre", label=name)
            # host s waited per host s (a wait counts when it ends, as LOCK_PROFILING's)
            ax2.step(t[1:][ok], np.diff(wait)[ok] / 1e6 / dw[ok], where="pre", label=name)
    if not names:
        ax1.text(0.5, 0.5, "no contested lock", ha="center", va="center",
                 transform=ax1.transAxes)
    ax1.set_ylabel("contested acquisitions\nper simulated s")
    ax2.set_ylabel("wait (host s)\nper host s")
    ax2.set_xlabel("simulated time (s)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    if names:
        fig.legend(*ax1.get_legend_handles_labels(), loc="outside right upper",
                   title="lock")
    return _finish(fig, f"Lock contention, top {len(names)} locks: {s.label}", names)


def _summed(s: Series, key: str, t: Any) -> Any:
    """A kernel counter summed over CPUs at times ``t`` (each CPU's last sample before)."""
    total = np.zeros(len(t))
    for rs in s.cpus.values():
        times = np.array([r["sim"] for r in rs])
        vals = np.array([float((r.get("kernel") or {}).get(key, 0)) for r in rs])
        idx = np.searchsorted(times, t, side="right") - 1
        total += np.where(idx >= 0, vals[np.clip(idx, 0, None)], 0.0)
    return total


def swap_figure(s: Series) -> Figure:
    """Swap activity: swapouts, swapins and free pages over time."""
    fig = Figure(figsize=(10, 8), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    t = np.array(sorted({r["sim"] for rs in s.cpus.values() for r in rs}))
    names = []
    for ax, pairs in ((ax1, (("swapouts", "swapouts (processes)"),
                             ("swapins", "swapins (processes)"))),
                      (ax2, (("pages_swapped_out", "pages swapped out"),
                             ("pages_swapped_in", "pages swapped in")))):
        for key, label in pairs:
            ax.step(t, _summed(s, key, t), where="post", label=label)
            names.append(label)
        ax.legend(loc="upper left")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("processes\n(cumulative)")
    ax2.set_ylabel("pages\n(cumulative)")
    vm = [(r["wall"], r.get("vm") or {}) for r in s.server if (r.get("vm") or {})]
    if vm:
        tv = s.sim_of_wall([w for w, _ in vm])
        ax3.step(tv, [v.get("free", np.nan) for _, v in vm], where="post",
                 label="free pages", color="#1f77b4")
        names.append("free pages")
        last = vm[-1][1]
        for key, label, style in (("free_target", "free target", "--"),
                                  ("free_min", "free min", ":")):
            if isinstance(last.get(key), int):
                ax3.axhline(last[key], linestyle=style, color="#555555", label=label)
                names.append(label)
        ax3.legend(loc="upper right")
        if isinstance(last.get("pages"), int):
            ax3.set_ylim(0, last["pages"])
    else:
        ax3.text(0.5, 0.5, "no page counts in this run's samples", ha="center",
                 va="center", transform=ax3.transAxes)
    ax3.set_ylabel("pages")
    ax3.set_xlabel("simulated time (s)")
    ax3.grid(True, alpha=0.3)
    return _finish(fig, f"Swap activity and free memory: {s.label}", names)


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=100, metadata={
        "Title": fig.smp_title,  # type: ignore[attr-defined]
        "Series": json.dumps(fig.smp_series),  # type: ignore[attr-defined]
        "Software": f"smp {__version__}"})


def write_plots(run_dir: str) -> list[str]:
    """Write the three charts into ``run_dir``; returns their paths."""
    s = load_series(run_dir)
    out = []
    for key, make in (("cpu", cpu_figure), ("locks", lock_figure), ("swap", swap_figure)):
        path = os.path.join(run_dir, FILES[key])
        save(make(s), path)
        out.append(path)
    return out
