"""``smp plot RUN_DIR``: charts of a run's time series (``stats.jsonl``), as PNG files in
the run directory, for people to look at.

* ``cpu_utilisation.png``: one panel per CPU, the share of its ticks in each mode over
  each sample interval, stacked (user at the bottom, idle on top), against simulated time;
  with more than 8 CPUs, a heatmap instead (a row per CPU, the colour its busy share: not
  idle) above the machine's mean share of each mode, stacked;
* ``lock_contention.png``: for the locks with the most contested acquisitions, contested
  acquisitions per simulated second, and milliseconds waited for each per simulated second
  (ms per simulated s, as ``smp top``'s wait columns; the waits are the lock table's time:
  simulated in virtual time, host time in wall time; summed over the waiting threads, so
  2000 means two threads waiting all the time; a wait is counted when it ends, as
  LOCK_PROFILING counts it, so long waits make spikes);
* ``swap.png``: processes swapped out and in, pages swapped out and in (cumulative, summed
  over CPUs), and free pages against the pageout daemon's thresholds.

Every chart has a title naming the config and the seed, labelled axes with units and a
legend; a run that panicked has the panic marked on every panel (a red line at its
simulated time). Each PNG also carries its title and the names of its series as text chunks
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
    panic_at: float | None = None      # simulated time of the panic, if the run panicked
    panic: str = ""

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
    except (OSError, UnicodeDecodeError) as e:     # RUN_DIR a file, stats.jsonl a folder
        raise PlotError(f"{path}: cannot read it: "
                        f"{getattr(e, 'strerror', None) or e}") from None
    for rs in cpus.values():
        rs.sort(key=lambda r: r.get("sim", 0.0))
    if not any(len(rs) >= 2 for rs in cpus.values()):
        raise PlotError(f"{path}: fewer than two samples of any CPU: nothing to plot")
    server.sort(key=lambda r: r.get("wall", 0.0))
    config, seed = "?", "?"
    panic_at: float | None = None
    panic = ""
    try:
        with open(os.path.join(run_dir, "report.json")) as f:
            rep = json.load(f)
        config, seed = rep.get("config") or "?", rep.get("seed", "?")
        p = rep.get("panic") or None
        if p:
            from smp.observe.summary import panic_message
            panic = panic_message(p)
            at = p.get("sim_time")
            panic_at = float(at) if isinstance(at, (int, float)) else \
                max(float(rs[-1].get("sim", 0.0)) for rs in cpus.values())
    except (OSError, ValueError, AttributeError, TypeError, KeyError, IndexError):
        # none, not JSON (a ValueError) or of another shape: the charts go without it
        rc = run_config(run_dir)
        seed = rc.get("seed", "?")
    return Series(cpus, server, os.path.basename(str(config)), seed, panic_at, panic)


def mark_panic(s: Series, axes: Any, label: bool = True) -> None:
    """A red line at the panic's simulated time on each of ``axes`` (and its name on the
    first)."""
    if s.panic_at is None:
        return
    for i, ax in enumerate(axes):
        ax.axvline(s.panic_at, color="#d62728", linewidth=1.5, linestyle="--", zorder=5)
        if label and i == 0:
            ax.text(s.panic_at, 1.0, " panic", color="#d62728", fontsize=9, va="bottom",
                    ha="center", transform=ax.get_xaxis_transform(), clip_on=False)


def _finish(fig: Figure, title: str, series_names: list[str]) -> Figure:
    fig.suptitle(title, fontsize=12)
    fig.smp_series = series_names  # type: ignore[attr-defined]
    fig.smp_title = title  # type: ignore[attr-defined]
    return fig


# -- the charts ------------------------------------------------------------------------------
HEATMAP_CPUS = 8        # more CPUs than this: a heatmap, not a panel each


def _cpu_rates(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [cpu_rates(a, b) for a, b in zip(rs, rs[1:]) if b["sim"] > a["sim"]]


def cpu_figure(s: Series) -> Figure:
    """Per-CPU utilisation stacked by state over time (a heatmap past HEATMAP_CPUS)."""
    if len(s.cpus) > HEATMAP_CPUS:
        return cpu_heatmap(s)
    cpus = sorted(s.cpus)
    ncols = 1 if len(cpus) <= 4 else (2 if len(cpus) <= 8 else 4)
    nrows = -(-len(cpus) // ncols)
    fig = Figure(figsize=(5.5 * ncols + 2.0, 1.9 * nrows + 1.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for i, cpu in enumerate(cpus):
        ax = axes[i // ncols][i % ncols]
        rates = _cpu_rates(s.cpus[cpu])
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
    mark_panic(s, [axes[i // ncols][i % ncols] for i in range(len(cpus))])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", title="mode")
    return _finish(fig, f"Per-CPU utilisation by state: {s.label}", list(MODE_ORDER))


def cpu_heatmap(s: Series) -> Figure:
    """Many CPUs: a row per CPU coloured by its busy share (not idle) over time, and the
    machine's mean share of each mode below it."""
    cpus = sorted(s.cpus)
    tmax = max(float(rs[-1]["sim"]) for rs in s.cpus.values())
    grid = np.linspace(0.0, tmax, 201)
    mid = (grid[:-1] + grid[1:]) / 2
    busy = np.full((len(cpus), len(mid)), np.nan)
    modes = np.zeros((len(MODE_ORDER), len(mid)))
    counted = np.zeros(len(mid))
    for row, cpu in enumerate(cpus):
        rates = _cpu_rates(s.cpus[cpu])
        if not rates:
            continue
        ends = np.array([r["sim"] for r in rates])
        idx = np.searchsorted(ends, mid, side="left")      # the interval each point is in
        ok = idx < len(rates)
        busy[row, ok] = [rates[i]["busy"] for i in idx[ok]]
        for k, m in enumerate(MODE_ORDER):
            modes[k, ok] += [rates[i]["pct"][m] for i in idx[ok]]
        counted += ok
    modes = np.divide(modes, counted, out=np.zeros_like(modes), where=counted > 0)
    fig = Figure(figsize=(11, 0.18 * len(cpus) + 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True,
                            gridspec_kw={"height_ratios": [max(len(cpus) * 0.18, 2.5), 2]})
    im = ax1.imshow(busy, aspect="auto", interpolation="nearest", cmap="magma",
                    vmin=0, vmax=100, extent=(0, tmax, len(cpus) - 0.5, -0.5))
    ax1.set_ylabel("cpu")
    step = max(1, len(cpus) // 16)
    ax1.set_yticks(range(0, len(cpus), step), [str(c) for c in cpus[::step]])
    fig.colorbar(im, ax=ax1, label="busy, % of ticks (not idle)")
    ax2.stackplot(mid, *modes, labels=MODE_ORDER,
                  colors=[MODE_COLOURS[m] for m in MODE_ORDER], step="mid")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel(f"mean of {len(cpus)} CPUs\n% of ticks")
    ax2.set_xlabel("simulated time (s)")
    ax2.grid(True, alpha=0.3)
    handles, labels = ax2.get_legend_handles_labels()
    ax2.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5),
               title="mode")
    mark_panic(s, [ax1, ax2])
    return _finish(fig, f"Utilisation of {len(cpus)} CPUs: {s.label}", list(MODE_ORDER))


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
            # ms waited per simulated s (a wait counts when it ends, as LOCK_PROFILING's)
            ax2.step(t[1:][ok], np.diff(wait)[ok] / 1e3 / dt[ok], where="pre", label=name)
    if not names:
        ax1.text(0.5, 0.5, "no contested lock", ha="center", va="center",
                 transform=ax1.transAxes)
    ax1.set_ylabel("contested acquisitions\nper simulated s")
    ax2.set_ylabel("ms waited\nper simulated s")
    ax2.set_xlabel("simulated time (s)\nms waited: time the lock's waiters spent "
                   "waiting, summed over the waiting threads (2000 ms per s: two threads "
                   "waiting all the time)", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    mark_panic(s, [ax1, ax2])
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
    mark_panic(s, [ax1, ax2, ax3])
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
