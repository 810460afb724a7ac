"""Every shipped config (configs/*.toml) runs whole: the real server, CPUs, kernel and user
land, shortened with ``--set``-style overrides so that the file stays within a few minutes
on a 2-core host. Each run must end by its duration, clean: exit 0, ``ok``, no invariant
violation, no checksum error; the swapping configs must really swap. The default config
also runs once at full length, where every path of vm_glue must have run.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from helpers import REPO, describe
from smp.run.config import load_config
from smp.run.launcher import run_machine
from smp.kernel.kern.subr_counter import SUMMARY_COUNTERS as KERNEL_COUNTERS

pytestmark = pytest.mark.long

CONFIGS = REPO / "configs"

# config -> overrides of the short run: the runs that must swap keep enough simulated time
# for their sleepers to age past the thresholds (swap-heavy: threshold1 2 s and 5 s sleeps,
# and its hogs: swapouts from 3 s on; idle-swap: threshold2 3 s and 8 s sleeps, the vm
# daemon's walks every second or two, the first that finds sleepers asleep 3 s at about
# 5 s, if schedcpu's fifth ageing came before it: the two race, and a 7-s run whose walk
# at 5.42 s came 20 ms before that ageing swapped nothing; 9 s has a walk after it); the
# others need only boot, fork and run a little. Virtual time: what a run does per
# simulated second does not depend on how fast the host is.
SHORT: dict[str, list[str]] = {
    "default": ["run.duration=2"],
    "1cpu": ["run.duration=3"],
    "2cpu": ["run.duration=2"],
    "8cpu": ["run.duration=2"],
    "32cpu": ["run.duration=2"],
    "swap-heavy": ["run.duration=5"],
    "idle-swap": ["run.duration=9"],
    "stress": ["run.duration=2"],
    "freebsd-5.0": ["run.duration=2"],
    "hunt-f2": ["run.duration=2"],
}


def shipped() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.toml"))


def run_config(name: str, overrides: list[str], tmp_path: pathlib.Path) -> Any:
    cfg = load_config(CONFIGS / f"{name}.toml", overrides)
    return run_machine(cfg, run_dir=str(tmp_path / "run"), log=lambda line: None)


def assert_clean(res: Any) -> dict[str, int]:
    r = res.report
    assert res.exit_status == 0 and r["ok"] is True, describe(res)
    assert r["reason"] == "end of run", describe(res)
    assert r["panic"] is None and r["invariants"] == [] and r["problems"] == [], describe(res)
    k = r["kernel"]
    assert k["invariant_violations"] == 0, describe(res)
    assert k["checksum_errors"] == 0, describe(res)
    assert all(c["reported"] for c in r["cpus"]), describe(res)
    return dict(k)


def test_every_shipped_config_has_a_short_run() -> None:
    assert sorted(SHORT) == shipped(), "a config in configs/ without a test here, or the reverse"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(SHORT))
def test_config_runs_clean(tmp_path: pathlib.Path, name: str) -> None:
    res = run_config(name, SHORT[name], tmp_path)
    k = assert_clean(res)
    cfg = load_config(CONFIGS / f"{name}.toml", SHORT[name])
    n = int(cfg["machine.cpus"])
    assert len(res.report["cpus"]) == n
    assert f"machine: {n} CPU{'s' if n != 1 else ''}, " in (tmp_path / "run" / "log.txt"
                                                           ).read_text()
    # the in-flight invariants (smp.machine.inflight): on, and nothing from them
    assert res.report["inflight"]["checks"] > 0, describe(res)
    assert [f for f in res.report["findings"] if f["detector"] == "inflight"] == []
    if int(cfg["user.procs_per_cpu"]) > 0:
        assert k["forks"] > 0, describe(res)
    if name == "swap-heavy":
        assert k["swapouts"] > 0, describe(res)
        assert k["pages_swapped_out"] > 0, describe(res)
    if name == "idle-swap":
        assert k["swapouts"] > 0, describe(res)
        # plenty of memory: the swapouts are idle swapouts, not the pageout daemon's
        assert k["vm_waits"] <= 2, describe(res)


@pytest.mark.timeout(600)  # 20 simulated s: a minute quiet, minutes on a loaded host
def test_default_config_full_length_runs_every_path(tmp_path: pathlib.Path) -> None:
    """configs/default.toml as shipped (20 simulated s): every kernel counter of the report
    but the two that count failures is > 0, swapin_waits (faultin's PS_SWAPPINGIN wait)
    included: debuggers leave recently swapped processes alone, so U-areas get laundered
    and a swap-in sleeps on the swap device while a PHOLD comes for the same process."""
    res = run_config("default", [], tmp_path)
    k = assert_clean(res)
    assert res.report["duration_sim_s"] >= 19.0, describe(res)
    assert [f for f in res.report["findings"] if f["detector"] == "inflight"] == []
    zero = [c for c in KERNEL_COUNTERS
            if c not in ("checksum_errors", "invariant_violations") and k[c] <= 0]
    assert not zero, f"counters that stayed 0: {zero}; {describe(res)}"
    lines = res.report["server"]["lines"]          # machine.lines: CPUs keep lock lines
    assert lines["acquires"] > 0 and lines["recalled"] > 0, lines


@pytest.mark.timeout(90)
def test_without_lines_every_acquire_asks_the_server(tmp_path: pathlib.Path) -> None:
    res = run_config("default", ["machine.lines=false", "run.duration=2"], tmp_path)
    assert_clean(res)
    assert res.report["server"]["lines"] == {"granted": 0, "acquires": 0, "recalled": 0,
                                             "held": 0}
