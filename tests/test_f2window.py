"""benchmarks/f2window.py's analysis: F2's windows found in a log of operations (as the
replay's tracer writes it), a wakeup's store inside one counted as a hit, one outside it
as a near miss, faultin's two loads as one window. Pure logic on made-up logs."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest

pytestmark = pytest.mark.quick

_PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "f2window.py"
_spec = importlib.util.spec_from_file_location("f2window", _PATH)
assert _spec is not None and _spec.loader is not None
f2window = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(f2window)

SET, CLR = 815, 446
LINES = {SET: "TD_SET_SWAPPED", CLR: "TD_CLR_SWAPPED"}
DAEMON, NAPPER_TD, CLOCK = 306, 483, 290     # the vm daemon, the napper's thread, a CPU's
SLEEPING, SWAPPED = 0x2, 0x4


def op(n: int, tid: int, kind: str, line: int | str, value: int, t_us: int,
       field: str = "td_inhibitors") -> list[Any]:
    site = f"vm/vm_glue.py:{line}" if isinstance(line, int) else line
    return [n, 0, tid, kind, site, NAPPER_TD, field, value, t_us * 1000]


def napper_asleep() -> list[list[Any]]:
    return [[1, 2, NAPPER_TD, "Z", "userland/libc.py:77", NAPPER_TD, "", 3, 0]]


def test_a_wakeup_store_inside_swapouts_window_is_a_hit() -> None:
    recs = napper_asleep() + [
        op(10, DAEMON, "S", SET, 0x21, 5000, "td_state"),
        op(11, DAEMON, "L", SET, SLEEPING, 5000),
        op(12, CLOCK, "S", "kern/kern_synch.py:124", 0, 5010),     # TD_CLR_SLEEPING
        op(14, DAEMON, "S", SET, SLEEPING | SWAPPED, 5040),
    ]
    [w] = f2window.analyse(recs, LINES)
    assert (w["macro"], w["hits"], w["window_ops"], w["timo"]) == ("TD_SET_SWAPPED", 1, 2, 3)


def test_a_wakeup_after_the_window_is_a_near_miss_not_a_hit() -> None:
    recs = napper_asleep() + [
        op(11, DAEMON, "L", SET, SLEEPING, 5000),
        op(12, DAEMON, "S", SET, SLEEPING | SWAPPED, 5040),
        op(40, CLOCK, "S", "kern/kern_synch.py:124", SWAPPED, 17040),
    ]
    [w] = f2window.analyse(recs, LINES)
    assert (w["hits"], w["window_ops"], w["after_ops"], w["after_us"]) == (0, 0, 28, 12000)
    assert w["before_us"] is None


def test_faultins_two_loads_make_one_window_from_the_second() -> None:
    recs = [
        op(20, DAEMON, "L", CLR, SLEEPING | SWAPPED, 9000),     # the test
        op(21, CLOCK, "S", "kern/kern_synch.py:124", SWAPPED, 9010),
        op(22, DAEMON, "L", CLR, SWAPPED, 9020),                # the read-modify-write
        op(23, DAEMON, "S", CLR, 0, 9060),
    ]
    [w] = f2window.analyse(recs, LINES)
    assert (w["macro"], w["load_op"], w["hits"], w["loaded"]) == ("TD_CLR_SWAPPED", 22, 0, SWAPPED)


def test_loads_and_stores_elsewhere_are_no_window() -> None:
    recs = [op(1, CLOCK, "L", "kern/kern_synch.py:123", SLEEPING, 10),
            op(2, CLOCK, "S", "kern/kern_synch.py:124", 0, 20)]
    assert f2window.analyse(recs, LINES) == []


def test_the_macros_are_found_in_the_kernels_source() -> None:
    found = f2window.macro_lines()
    assert sorted(found.values()) == ["TD_CLR_SWAPPED", "TD_SET_SWAPPED"]
