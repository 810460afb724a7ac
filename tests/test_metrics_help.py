"""Every Prometheus metric of ``smp run --metrics`` says what it counts and in which unit,
checked in-process on a collector fed synthetic samples (the exporter against a real
machine is tested in test_monitor.py)."""

from __future__ import annotations

import os
import re

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from smp.kernel.kern.subr_counter import COUNTER_HELP as KERNEL_COUNTER_HELP
from smp.kernel.kern.subr_counter import PREFIX_HELP
from smp.observe.counters import kernel_counter_help
from smp.observe.metrics import MachineCollector
from smp.kernel.kern.subr_counter import SUMMARY_COUNTERS as KERNEL_COUNTERS

# what the kernel registers at boot and the server publishes with its samples
DESCRIBED = {"summary": list(KERNEL_COUNTERS), "help": KERNEL_COUNTER_HELP,
             "prefix_help": PREFIX_HELP}

pytestmark = pytest.mark.quick

UNIT = re.compile(r"\((?:[a-z/ ,0-9]*\b)?(seconds|simulated seconds|host seconds|bytes|"
                  r"pages|ticks of 1/hz simulated s|requests|acquisitions|switches|"
                  r"interrupts|messages|samples, one per run.stats_interval wall s|"
                  r"simulated seconds since boot|always 1|events since boot, per CPU)\)")


def _families() -> dict[str, object]:
    c = MachineCollector()
    c.info = {"config": "default.toml", "seed": "1"}
    kernel = {k: 1 for k in KERNEL_COUNTERS}
    kernel.update({"programs_hog": 2, "failpoint_swapout_procs_prs_new": 1,
                   "something_new": 3})
    c.record({"type": "cpu", "cpu": 0, "pid": os.getpid(), "sim": 1.0,
              "ticks": {"user": 1, "sys": 2, "idle": 3}, "kernel": kernel})
    c.record({"type": "server", "messages": 10, "swap": {"reads": 1, "writes": 2},
              "counters": DESCRIBED,
              "locks": [{"name": "Giant", "acquires": 3, "contested": 1,
                         "wait_us_total": 10.0, "max_hold_us": 5.0}],
              "vm": {"free": 10, "pages": 512}})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_metric_says_what_it_counts_and_its_unit() -> None:
    fams = _families()
    assert len(fams) > 40
    for name, f in fams.items():
        doc = f.documentation  # type: ignore[attr-defined]
        assert UNIT.search(doc), f"{name}: no unit in {doc!r}"
        assert len(doc) > 25, f"{name}: {doc!r} says too little"


def test_every_kernel_counter_of_the_report_has_its_own_help() -> None:
    for k in KERNEL_COUNTERS:
        assert k in KERNEL_COUNTER_HELP, k
    fams = _families()
    assert fams["smp_kernel_swapins"].documentation == (  # type: ignore[attr-defined]
        "Kernel counter: processes swapped in whole (vm_proc_swapin: U-area and kernel "
        "stacks) (events since boot, per CPU)")
    assert kernel_counter_help("programs_hog", DESCRIBED) == \
        "Kernel counter: user programs of this kind started (hog) (events since boot, per CPU)"
    assert "'something_new'" in kernel_counter_help("something_new", DESCRIBED)


def test_every_registered_kernel_counter_is_there_from_the_start_at_zero() -> None:
    """A CPU's sample holds only the counters it has counted: early in a run there was no
    smp_kernel_swapouts_total at all (not even its help) for a Prometheus to find."""
    c = MachineCollector()
    c.record({"type": "cpu", "cpu": 0, "pid": os.getpid(), "sim": 0.5,
              "ticks": {"idle": 3}, "kernel": {"forks": 2}})
    c.record({"type": "server", "counters": DESCRIBED})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    for k in KERNEL_COUNTERS:
        samples = fams[f"smp_kernel_{k}"].samples       # type: ignore[attr-defined]
        assert [(s.labels, s.value) for s in samples if s.name.endswith("_total")] == \
            [({"cpu": "0"}, 2.0 if k == "forks" else 0.0)], k
