"""``smp plot``'s figures from a synthetic run directory (stats.jsonl and report.json written
here, no machine; the PNGs of a real run are checked in test_monitor.py): the lock wait is
per simulated second in ms, a panic is marked on every panel, and more than 8 CPUs make a
heatmap."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.quick

PANIC_AT = 2.2


def _write_run(rdir: pathlib.Path, ncpus: int, panic: bool = True) -> None:
    rdir.mkdir()
    recs: list[dict[str, Any]] = []
    for k in range(7):                    # every 0.5 simulated s, at speed 0.5: 1 wall s
        sim, wall = 0.5 * k, 1000.0 + k
        for cpu in range(ncpus):
            busy = 10 * k + cpu
            recs.append({"type": "cpu", "cpu": cpu, "sim": sim, "wall": wall,
                         "ticks": {"user": 0, "nice": 0, "sys": busy, "intr": 0,
                                   "spin": 0, "idle": 100 * k - busy},
                         "kernel": {"swapouts": k, "swapins": 0, "pages_swapped_out": 8 * k,
                                    "pages_swapped_in": 0}})
        # Giant: 100 more contested acquisitions and 500000 us more wait every interval
        recs.append({"type": "server", "wall": wall, "vm": {"free": 100,
                     "pages": 512, "free_target": 80, "free_min": 20},
                     "locks": [{"name": "Giant", "contested": 100 * k,
                                "wait_us_total": 500000.0 * k, "acquires": 300 * k}]})
    (rdir / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = {"config": "/x/configs/8cpu.toml", "seed": 3,
              "panic": {"message": "panic: boom", "cpu": 0, "sim_time": PANIC_AT}
              if panic else None}
    (rdir / "report.json").write_text(json.dumps(report))


def _panic_lines(ax: Any) -> list[Any]:
    return [ln for ln in ax.lines if list(ln.get_xdata()) == [PANIC_AT, PANIC_AT]]


def test_lock_wait_is_ms_per_simulated_second_and_says_what_it_means(
        tmp_path: pathlib.Path) -> None:
    """Issue 16: the panel read "wait (host s) per host s" and reached 23 (the number of
    waiters, in the host's time)."""
    from smp.observe.plot import load_series, lock_figure
    _write_run(tmp_path / "r", 4, panic=False)
    fig = lock_figure(load_series(str(tmp_path / "r")))
    ax1, ax2 = fig.axes[:2]
    assert ax2.get_ylabel() == "ms waited\nper simulated s"
    assert "summed over the waiting threads" in ax2.get_xlabel()
    (wait,) = ax2.lines
    assert np.allclose(wait.get_ydata(), 1000.0)      # 500 ms per 0.5 simulated s
    (cont,) = ax1.lines
    assert np.allclose(cont.get_ydata(), 200.0)       # 100 per 0.5 simulated s


def test_a_panic_is_marked_on_every_panel(tmp_path: pathlib.Path) -> None:
    from smp.observe.plot import cpu_figure, load_series, lock_figure, swap_figure
    _write_run(tmp_path / "r", 4)
    s = load_series(str(tmp_path / "r"))
    assert s.panic_at == PANIC_AT and s.panic == "boom"
    for fig in (cpu_figure(s), lock_figure(s), swap_figure(s)):
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert panels and all(len(_panic_lines(ax)) == 1 for ax in panels), fig.smp_title
        assert any(t.get_text().strip() == "panic" for t in panels[0].texts)


def test_more_than_8_cpus_make_a_heatmap(tmp_path: pathlib.Path) -> None:
    from smp.observe.plot import cpu_figure, load_series, write_plots
    _write_run(tmp_path / "r", 12)
    fig = cpu_figure(load_series(str(tmp_path / "r")))
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 1
    busy = images[0].get_array()
    assert busy.shape[0] == 12                          # a row per CPU
    # cpu c is busy (10k + c - (10(k-1) + c - 1))... per interval: 10 more sys ticks of 100
    assert np.nanmin(busy) == pytest.approx(10.0) and np.nanmax(busy) == pytest.approx(10.0)
    assert fig.smp_title.startswith("Utilisation of 12 CPUs: 8cpu.toml, seed 3")
    assert [p.name for p in map(pathlib.Path, write_plots(str(tmp_path / "r")))] == \
        ["cpu_utilisation.png", "lock_contention.png", "swap.png"]


def test_up_to_8_cpus_keep_a_panel_each(tmp_path: pathlib.Path) -> None:
    from smp.observe.plot import cpu_figure, load_series
    _write_run(tmp_path / "r", 8, panic=False)
    fig = cpu_figure(load_series(str(tmp_path / "r")))
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 8
    assert not [im for ax in fig.axes for im in ax.images]
