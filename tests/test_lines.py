"""Lines: the CPU that keeps taking a mutex keeps the lock word's line (hw.bus, smp.machine.locks).

The lock table's side in process (pure logic), then the real server with two CPU buses:
mutual exclusion holds while one CPU takes a lock on the strength of its line and the
other asks for it, and every acquisition still reaches the server in order."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

from smp.hw.protocol import (AF_LINE, AF_TRY, BUSY, EXCL, GRANTED, GRANTED_LINE, LK_SLEEP,
                             LK_SPIN, QUEUED)
from smp.machine.locks import LINE_STREAK, LockError, LockTable

from helpers import bare_server

L = 0x100


def _table(kind: str = LK_SLEEP) -> LockTable:
    t = LockTable()
    t.init(L, kind, "sleep mutex" if kind == LK_SLEEP else "spin mutex", "testlock", 0)
    return t


def _cycles(t: LockTable, tid: int, cpu: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(t.acquire(tid, cpu, "a:1", L, EXCL, 0))
        t.release(tid, cpu, "a:2", L, EXCL)
    return out


def test_a_cpu_that_keeps_taking_a_mutex_gets_its_line() -> None:
    t = _table()
    got = _cycles(t, 1, 0, LINE_STREAK)
    assert got == [GRANTED] * (LINE_STREAK - 1) + [GRANTED_LINE]
    assert t.lines == {L: 0}
    # on the strength of the line: posted, granted without a question
    assert t.acquire(1, 0, "a:3", L, EXCL, AF_LINE) == GRANTED
    assert t.locks[L].owner == 1
    t.release(1, 0, "a:4", L, EXCL)


def test_another_cpu_waits_until_the_line_is_relinquished() -> None:
    t = _table()
    _cycles(t, 1, 0, LINE_STREAK)
    assert t.acquire(2, 1, "b:1", L, EXCL, 0) == QUEUED        # free, but cpu 0's line
    assert t.take_recalls() == [(0, L)]
    assert t.acquire(1, 0, "a:5", L, EXCL, AF_LINE) == GRANTED  # sent before the recall
    assert t.release(1, 0, "a:6", L, EXCL) == []               # the line is on its way
    assert t.acquire(3, 1, "b:2", L, EXCL, AF_TRY) == BUSY      # a try-lock fails meanwhile
    assert t.take_recalls() == []                               # recalled once
    grants = t.relinquish(0, L)
    assert grants == [(1, 2, L, False)]                         # the waiter is woken
    assert t.lines == {} and t.acquire(2, 1, "b:3", L, EXCL, 0) == GRANTED


def test_a_spin_waiter_gets_the_lock_handed_over_on_relinquish() -> None:
    t = _table(LK_SPIN)
    _cycles(t, 1, 0, LINE_STREAK)
    assert t.acquire(1, 0, "a:1", L, EXCL, AF_LINE) == GRANTED
    assert t.acquire(2, 1, "b:1", L, EXCL, 0) == QUEUED
    assert t.release(1, 0, "a:2", L, EXCL) == []
    assert t.relinquish(0, L) == [(1, 2, L, True)]
    assert t.locks[L].owner == 2


def test_a_cpu_leaving_a_halted_machine_hands_its_lines_to_nobody() -> None:
    """A CPU that leaves a running machine gives its lines back and the waiters get the
    lock; one that leaves a halted machine gives them back to nobody: a spin waiter on
    another CPU, stopped mid-spin by the halt, took the lock after the run's end (an
    acquisition a replay of a panicked run did not count)."""
    for halted in (False, True):
        t = _table(LK_SPIN)
        _cycles(t, 1, 0, LINE_STREAK)
        assert t.acquire(2, 1, "b:1", L, EXCL, 0) == QUEUED
        acquires = t.profile.lock_report()[0]["acquires"]
        grants = t.drop_lines(0, hand_on=not halted)
        assert t.lines == {}
        if halted:
            assert grants == [] and t.locks[L].owner == 0
            assert t.profile.lock_report()[0]["acquires"] == acquires
        else:
            assert grants == [(1, 2, L, True)] and t.locks[L].owner == 2


def test_no_line_while_others_wait_and_line_misuse_panics() -> None:
    t = _table()
    _cycles(t, 1, 0, LINE_STREAK - 1)
    assert t.acquire(1, 0, "a:1", L, EXCL, 0) == GRANTED_LINE
    with pytest.raises(LockError):                              # held: no line acquire
        t.acquire(1, 0, "a:2", L, EXCL, AF_LINE)
    with pytest.raises(LockError):                              # not its line
        t.acquire(2, 1, "b:1", L, EXCL, AF_LINE)
    with pytest.raises(LockError):
        t.relinquish(1, L)


def _cpu(endpoint: str, cpu: int, n: int, out: Any) -> None:
    """A CPU that takes the shared lock ``n`` times and increments a counter under it."""
    from smp.hw.bus import Bus
    from smp.hw.protocol import Op
    bus = Bus(endpoint, f"cpu{cpu}")
    tid = 100 + cpu
    try:
        bus.hello("cpu", cpu, os.getpid())
        h = bus.call(Op.LOOKUP, tid, "l:1", "shared")           # named before we started
        addr = h << 8
        for _ in range(n):
            r = bus.call(Op.ACQUIRE, tid, "l:2", addr, EXCL, 0)
            while r == QUEUED:                                   # woken: try again
                assert bus.poll_events(20.0), "no WAKE within 20 s"
                bus.events.popleft()
                r = bus.call(Op.ACQUIRE, tid, "l:2", addr, EXCL, 0)
            assert r == GRANTED, r
            x = bus.call(Op.LOAD, tid, "l:3", h, "x")
            bus.post(Op.STORE, tid, "l:4", h, "x", x + 1)
            bus.post(Op.RELEASE, tid, "l:5", addr, EXCL)
        bus.call(Op.LOAD, tid, "l:6", h, "x")
        out.put((cpu, bus.line_hits))
    finally:
        bus.close()


@pytest.mark.timeout(60)
def test_two_cpus_on_one_lock_with_lines_lose_no_update() -> None:
    from smp.hw.bus import Bus
    from smp.hw.protocol import Op
    ctx = multiprocessing.get_context("fork")
    out: Any = ctx.Queue()
    procs: list[Any] = []
    with bare_server(2) as (endpoint, _server):
        boss = Bus(endpoint, "launcher")
        try:
            boss.hello("launcher", -1, os.getpid())
            boss.post(Op.DEFTYPE, 0, "", "ln", [["m", "lock", "", None], ["x", "int", "", 0]])
            h = boss.call(Op.NEW, 1, "t:1", "ln", {})
            boss.post(Op.LOCK_INIT, 1, "t:1", h << 8, LK_SLEEP, "sleep mutex", "lnlock", 0)
            boss.post(Op.SYMBOL, 1, "t:1", "shared", h)
            boss.call(Op.LOAD, 1, "t:2", h, "x")             # a fence: all of it applied
            n = 400
            procs = [ctx.Process(target=_cpu, args=(endpoint, c, n, out), daemon=True)
                     for c in (0, 1)]
            for p in procs:
                p.start()
            hits = dict(out.get(timeout=45) for _ in procs)
            assert boss.call(Op.LOAD, 1, "t:3", h, "x") == 2 * n     # no update lost
            rep = boss.call(Op.CTL_REPORT, 0, "")
            lines = rep["server"]["lines"]
            assert sum(hits.values()) == lines["acquires"] > 0, (hits, lines)
            assert rep["panic"] is None
            boss.post(Op.BYE, 0, "", "done")
        finally:
            boss.close()
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
