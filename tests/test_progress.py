"""Progress displays, fed synthetic samples (no machine): ``smp run`` off a terminal prints
a plain line every few simulated seconds; ``smp stress`` shows a bar on a terminal and
plain status lines otherwise, from its start. The live display of ``smp run`` on a
terminal is tested against a real machine in test_monitor.py."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from smp.hunt.stress import Progress
from smp.observe.progress import CampaignProgress, PlainRunProgress, campaign_line

pytestmark = pytest.mark.quick


def _cpu(cpu: int, sim: float) -> dict[str, object]:
    return {"type": "cpu", "cpu": cpu, "sim": sim, "wall": sim}


def test_plain_run_progress_prints_every_five_simulated_seconds() -> None:
    out = io.StringIO()
    p = PlainRunProgress(duration=20.0, speed=0.5, out=out)
    p.started({})
    for step in range(1, 41):                        # two CPUs, 0.5 simulated s apart
        for cpu in (0, 1):
            p.record(_cpu(cpu, step * 0.5 + 0.01 * cpu))
    p.record({"type": "server", "wall": 1.0})         # not a CPU sample: ignored
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" of ")[0] for line in lines] == ["sim 5.0", "sim 10.0", "sim 15.0"]
    assert lines[0].startswith("sim 5.0 of 20 s (25%), wall 0:0") and "ETA " in lines[0]
    assert "\x1b[" not in out.getvalue()


def test_a_long_run_prints_a_line_per_twentieth() -> None:
    assert PlainRunProgress(duration=600.0, speed=1.0).every == 30.0
    assert PlainRunProgress(duration=10.0, speed=1.0).every == 5.0


def test_campaign_progress_off_a_terminal_is_plain_lines_from_the_start() -> None:
    out = io.StringIO()
    cp = CampaignProgress(tty=False, out=out, every=3600)
    cp(Progress(0, 20, 0, 2, 0.1))                    # at the start: printed
    cp(Progress(1, 20, 0, 2, 30.0))                   # within `every`: not printed
    cp(Progress(2, 20, 1, 1, 60.0))
    cp.close()                                        # where it ended: printed
    lines = out.getvalue().splitlines()
    assert lines == [
        "stress: 0/20 runs, 0 failing, 2 running, 0.0 runs/min, wall 0:00",
        "stress: 2/20 runs, 1 failing, 1 running, 2.0 runs/min, wall 1:00, ETA 9:00"]


def test_campaign_line_has_no_eta_once_done() -> None:
    assert campaign_line(Progress(4, 4, 0, 0, 120.0)) == \
        "stress: 4/4 runs, 0 failing, 0 running, 2.0 runs/min, wall 2:00"


def test_campaign_progress_on_a_terminal_is_a_bar() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    cp = CampaignProgress(tty=True, console=console)
    cp(Progress(0, 10, 0, 2, 0.0))
    cp(Progress(3, 10, 1, 2, 60.0))
    cp.close()
    text = buf.getvalue()
    assert "3/10" in text and "1 failing" in text and "2 running" in text
    assert "3.0 runs/min" in text and "ETA 2:20" in text


def test_a_campaign_that_is_over_shows_no_eta() -> None:
    """A campaign ended by --time-budget (or its first failure) before its last run: its
    last line showed the ETA of runs that will never start."""
    over = Progress(3, 10, 1, 0, 61.0, over=True)
    assert over.eta is None
    assert campaign_line(over) == \
        "stress: 3/10 runs, 1 failing, 0 running, 3.0 runs/min, wall 1:01"
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    cp = CampaignProgress(tty=True, console=console)
    cp(Progress(3, 10, 1, 2, 60.0))
    cp(over)
    cp.close()
    frames = buf.getvalue().split("\r")
    assert "ETA 2:20" in frames[1] and "3/10 runs" in frames[-1], frames
    assert "ETA" not in frames[-1], frames
