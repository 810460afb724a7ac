"""Scale: a wide machine and a big one, each briefly.

* ``configs/32cpu.toml`` (32 CPU processes on a host with perhaps 2 cores) boots, runs and
  stops cleanly: every CPU says hello within the start bound, is not taken for dead under
  the oversubscription, runs ticks, and sends its final report;
* a machine with 1 GiB of simulated physical memory (262144 vm_pages) boots quickly (the
  BSP gets past ``vm_page_startup`` and the machine runs threads) and the server's peak
  RSS stays under 1.3 GiB.

Both run the machine in this process (``run_machine``: its processes are our children,
reaped by the launcher even on failure; the orphan check of conftest verifies it).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from smp.run.config import load_config
from smp.run.launcher import run_machine

from helpers import REPO, describe

pytestmark = [pytest.mark.long, pytest.mark.timeout(120)]

RSS_LIMIT_MB = 1.3 * 1024


def _run(tmp_path: pathlib.Path, config: str | None, overrides: list[str]) -> Any:
    cfg = load_config(config, overrides)
    return run_machine(cfg, run_dir=str(tmp_path / "run"), log=lambda line: None)


def test_32_cpus_run_to_completion(tmp_path: pathlib.Path) -> None:
    result = _run(tmp_path, str(REPO / "configs" / "32cpu.toml"), ["run.duration=1"])
    r = result.report
    assert result.exit_status == 0 and r["ok"], describe(result)
    assert len(r["cpus"]) == 32
    for c in r["cpus"]:
        assert c["reported"] and sum(c["ticks"].values()) > 0, c
    assert not r["server"]["unresponsive"], r["server"]


def test_1gib_machine_boots_and_server_rss(tmp_path: pathlib.Path) -> None:
    result = _run(tmp_path, None, ["machine.memory=1G", "run.duration=2"])
    r = result.report
    assert result.exit_status == 0 and r["ok"], describe(result)
    # the BSP finished vm_page_startup and the machine ran threads (not stuck booting)
    assert r["cpus"][0]["ctxsw"] > 0, r["cpus"][0]
    assert r["kernel"].get("forks", 0) > 0, r["kernel"]
    rss = r["server"]["rss_peak_mb"]
    assert 0 < rss < RSS_LIMIT_MB, f"server peak RSS {rss} MiB (limit {RSS_LIMIT_MB:.0f})"
