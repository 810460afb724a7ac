"""Stress campaigns end to end: `smp stress` runs real machines, finds what a switched-off
guard lets through, and says how to rerun it; a clean campaign passes.

Each test starts `smp stress` as a subprocess in its own process group and kills the group
if the test fails or times out, so no machine outlives it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.long

ROOT = pathlib.Path(__file__).resolve().parent.parent
STRESS = str(ROOT / "configs" / "stress.toml")


def _stress(tmp_path: pathlib.Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "smp.cli", "stress", *args, "--out", str(tmp_path / "runs")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=tmp_path)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.mark.timeout(150)
def test_a_switched_off_guard_is_caught_with_rerun_and_replay_commands(tmp_path: pathlib.Path) -> None:
    """Without the quick P_SYSTEM test, swapout_procs reaches a kernel process, which has
    no address space: the seed's own KASSERT fires."""
    r = _stress(tmp_path, STRESS, "--runs", "2", "--fail-point", "swapout_procs_p_system",
                timeout=140)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL seed" in r.stdout
    assert "[panic] panic: swapout_procs: a process has no address space" in r.stdout
    rerun = [line for line in r.stdout.splitlines() if "rerun:" in line][0]
    cfg = rerun.split("smp run ", 1)[1].strip()
    assert os.path.exists(cfg)
    text = pathlib.Path(cfg).read_text()
    assert "swapout_procs_p_system" in text and "seed" in text
    replay = next(line for line in r.stdout.splitlines() if "replay:" in line)
    assert replay.split("smp replay ", 1)[1].strip() == os.path.dirname(cfg)
    assert os.path.exists(os.path.join(os.path.dirname(cfg), "schedule.smpr"))
    assert "runs" in r.stderr and "failing" in r.stderr            # progress was shown


@pytest.mark.timeout(120)
def test_a_clean_campaign_passes_and_reports_known_findings_apart(tmp_path: pathlib.Path) -> None:
    r = _stress(tmp_path, STRESS, "--runs", "1", "--chaos", "high",
                "--set", "run.duration=3", timeout=110)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 runs, 1 without a new failure" in r.stdout
    assert "FAIL" not in r.stdout
    # the liveness detector is on by default, looked all through the run (some ten times a
    # simulated second), found no hang
    [report] = (tmp_path / "runs").glob("run0000-*/report.json")
    rep = json.loads(report.read_text())
    assert rep["liveness"]["checks"] > 20, rep["liveness"]
    assert not [f for f in rep["findings"] if f["detector"] == "liveness"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [["--runs", "0"], ["--fail-point", "no_such_guard"],
                                  ["--set", "machine.cpus=zero"]])
def test_usage_errors_exit_2(tmp_path: pathlib.Path, args: list[str]) -> None:
    r = _stress(tmp_path, STRESS, *args, timeout=25)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "smp:" in r.stderr
