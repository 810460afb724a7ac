"""The end-of-run conservation checks (smp.observe.report.check_invariants), in-process: a
sum of a field over a type's objects against a published total and the CPUs' counter,
with the slack a stop in the middle of an increment leaves."""

from __future__ import annotations

from typing import Any

from smp.observe.report import check_invariants

LOCKLOAD = {"name": "lockload", "what": "a lost update: mutual exclusion failed",
            "sum": ["lockobj", "lo_count"], "total": ["lockload", "ll_total"],
            "held": "lockobj", "counter": "lockload_increments"}


def server(summed: int, total: int, held: list[tuple[int, str]] = (),   # type: ignore[assignment]
           inv: dict[str, Any] = LOCKLOAD) -> dict[str, Any]:
    """A server report: the sum, the total and the locks (address, name) threads hold."""
    return {"policy": {"invariants": [inv]},
            "symbols": {"lockload": {"ll_total": total}},
            "field_sums": {"lockobj": {"lo_count": summed}},
            "thread_locks": {tid: {"held": [{"lock": name, "addr": addr}], "waiting": None}
                             for tid, (addr, name) in enumerate(held)}}


def test_equal_sum_total_and_counter_pass() -> None:
    assert check_invariants(server(100, 100), {"lockload_increments": 100}) == []


def test_a_lost_update_is_reported() -> None:
    bad = check_invariants(server(99, 100), {"lockload_increments": 100})
    assert len(bad) == 1 and "sum to 99" in bad[0] and "lost update" in bad[0]


def test_a_thread_stopped_between_its_store_and_the_total_is_not_a_violation() -> None:
    """The machine stopped a thread that held an object's mutex after it stored the
    object's count and before it added to the total: one ahead, one lock held."""
    assert check_invariants(server(101, 100, [(7, "lockobj")]),
                            {"lockload_increments": 100}) == []


def test_the_slack_is_one_increment_per_lock_held() -> None:
    kernel = {"lockload_increments": 100}
    assert check_invariants(server(102, 100, [(7, "lockobj"), (8, "lockobj")]), kernel) == []
    bad = check_invariants(server(102, 100, [(7, "lockobj"), (9, "Giant")]), kernel)
    assert len(bad) == 1 and "1 lockobj lock held at the stop" in bad[0]
    # a lost update is still one short, whatever is held
    assert check_invariants(server(99, 100, [(7, "lockobj")]), kernel)


def test_without_a_named_lock_there_is_no_slack() -> None:
    inv = {k: v for k, v in LOCKLOAD.items() if k != "held"}
    bad = check_invariants(server(101, 100, [(7, "lockobj")], inv),
                           {"lockload_increments": 100})
    assert len(bad) == 1 and "held at the stop" not in bad[0]


def test_a_counter_apart_from_the_total_is_reported() -> None:
    bad = check_invariants(server(100, 100), {"lockload_increments": 98})
    assert bad == ["lockload: 100 in memory (lockload.ll_total), CPUs counted 98 "
                   "(lockload_increments)"]
