"""The server's timeline (smp/machine/trace.py, wired by smp/machine/sequencer.py).

In process, no machine: a Server whose socket is a list, driven request by request as two
CPUs would drive it, with ``TimeSpec.trace_path`` set. What the timeline must show: the
threads each CPU ran, a spin lock handed to a waiting thread (its wait ends and its hold
begins at the release, on the waiter's CPU), a wakeup as an arrow from waker to sleeper,
and the panic as a mark across the timeline; and the report counts its events. ``smp
trace`` end to end (a recorded run replayed with the tracer) is in test_replay.py.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from helpers import inproc_server
from smp.hw.protocol import EXCL, LK_SLEEP, LK_SPIN, OK, Event, Op, field_addr, unpack
from smp.machine.sequencer import TimeSpec
from smp.machine.server import Server
from smp.machine.trace import count_events

pytestmark = pytest.mark.quick


def _machine(tmp_path: pathlib.Path) -> tuple[Server, Any, pathlib.Path]:
    path = tmp_path / "trace.json"
    srv, req = inproc_server(TimeSpec(virtual=True, trace_path=str(path)))
    return srv, req, path


def _two_locks(req: Any, first: tuple[int, str, str], second: tuple[int, str, str]
               ) -> tuple[int, int]:
    """Two lock objects made by cpu 0, each a (kind, class, name) lock: their addresses."""
    req(b"A", Op.DEFTYPE, "thing", [["t_mtx", "lock", "", None]], posted=True)
    req(b"A", Op.NEW, "thing", {}, tid=1)
    req(b"A", Op.NEW, "thing", {}, tid=1)
    a, b = field_addr(1, 0), field_addr(2, 0)
    req(b"A", Op.LOCK_INIT, a, *first, 0, posted=True)
    req(b"A", Op.LOCK_INIT, b, *second, 0, posted=True)
    return a, b


def _events(srv: Server, path: pathlib.Path) -> list[dict[str, Any]]:
    srv.seq.close({})
    doc = json.loads(path.read_text())
    assert count_events(str(path)) == len(doc["traceEvents"])
    return doc["traceEvents"]  # type: ignore[no-any-return]


def test_a_spin_lock_handed_to_a_waiter_ends_its_wait_and_begins_its_hold(
        tmp_path: pathlib.Path) -> None:
    srv, req, path = _machine(tmp_path)
    req(b"A", Op.DEFTYPE, "thing", [["t_mtx", "lock", "", None]], posted=True)
    req(b"A", Op.NEW, "thing", {}, tid=1)
    lock = field_addr(1, 0)
    req(b"A", Op.LOCK_INIT, lock, LK_SPIN, "spin mutex", "a spin", 0, posted=True)
    req(b"A", Op.ACQUIRE, lock, EXCL, 0, tid=1, t=1_000)          # granted
    req(b"B", Op.ACQUIRE, lock, EXCL, 0, tid=5, t=2_000)          # queued: spins
    req(b"A", Op.RELEASE, lock, EXCL, tid=1, t=9_000, posted=True)   # handed to 5
    req(b"A", Op.SLEEP, "chan", 0, tid=2, t=10_000, posted=True)
    req(b"B", Op.WAKEUP, "chan", False, "vm/vm_page.py:333", tid=5, t=12_000)
    stats = srv.publisher.report()["schedule"]["trace"]
    evs = _events(srv, path)
    assert stats["path"] == str(path) and stats["events"] > 0 and stats["dropped"] == 0
    names = {e["pid"]: e["args"]["name"] for e in evs if e.get("name") == "process_name"}
    assert names == {0: "cpu 0", 1: "cpu 1"}
    wait = [e for e in evs if e["ph"] == "X" and e["name"] == "wait a spin"]
    assert [(w["pid"], w["ts"], w["dur"]) for w in wait] == [(1, 2.0, 7.0)]
    holds = sorted((e["ts"], e["ph"], e["pid"], e["id"]) for e in evs
                   if e["name"] == "hold a spin")
    assert holds == [(1.0, "b", 0, f"{lock:#x}:1"), (9.0, "b", 1, f"{lock:#x}:5"),
                     (9.0, "e", 0, f"{lock:#x}:1"),
                     (12.0, "e", 1, f"{lock:#x}:5")]            # held to the end
    asleep = [e for e in evs if e["ph"] == "X" and "asleep on" in e["name"]]
    assert [(e["pid"], e["ts"], e["dur"]) for e in asleep] == [(0, 10.0, 2.0)]
    flow = sorted((e["ph"], e["pid"]) for e in evs if e.get("cat") == "wakeup")
    assert flow == [("f", 0), ("s", 1)]                     # from the waker to the sleeper
    [start] = [e for e in evs if e.get("cat") == "wakeup" and e["ph"] == "s"]
    assert start["args"] == {"channel": "'chan'", "woken": "thread 2", "by": "thread 5",
                             "site": "vm/vm_page.py:333"}, start    # who called wakeup
    ran = {(e["pid"], e["name"]) for e in evs if e["ph"] == "X" and e["tid"] == 1}
    assert {(0, "thread 1"), (0, "thread 2"), (1, "thread 5")} <= ran


def test_what_never_ends_is_on_the_timeline_and_msleep_lets_its_interlock_go(
        tmp_path: pathlib.Path) -> None:
    """A hang is a sleep or a wait that never ends: its slice was written only at its end,
    so the hung thread was the one thing the timeline left out. And msleep releases its
    interlock (the server does, in SLEEP): the hold went on to the end of the trace."""
    srv, req, path = _machine(tmp_path)
    mtx, spin = _two_locks(req, (LK_SLEEP, "sleep mutex", "proc lock"),
                           (LK_SPIN, "spin mutex", "sched lock"))
    req(b"A", Op.ACQUIRE, mtx, EXCL, 0, tid=2, t=1_000)
    req(b"A", Op.SLEEP, "chan", mtx, tid=2, t=3_000, posted=True)      # for ever
    req(b"B", Op.ACQUIRE, mtx, EXCL, 0, tid=5, t=4_000)                # the interlock: free
    req(b"B", Op.ACQUIRE, spin, EXCL, 0, tid=5, t=5_000)
    req(b"A", Op.ACQUIRE, spin, EXCL, 0, tid=3, t=6_000)               # waits for ever
    req(b"B", Op.WAKEUP, "other", False, tid=5, t=20_000)
    evs = _events(srv, path)
    held = sorted((e["ts"], e["ph"]) for e in evs if e["name"] == "hold proc lock"
                  and e["id"].endswith(":2"))
    assert held == [(1.0, "b"), (3.0, "e")], held
    asleep = [(e["name"], e["ts"], e["dur"]) for e in evs if e["ph"] == "X"
              and "asleep on" in e["name"]]
    assert asleep == [("thread 2 asleep on 'chan' (still at the end)", 3.0, 17.0)], asleep
    waits = [(e["name"], e["ts"], e["dur"]) for e in evs if e["ph"] == "X" and e["tid"] == 2]
    assert waits == [("wait sched lock (still at the end)", 6.0, 14.0)], waits


@pytest.mark.parametrize("message", ["boom", "panic: boom"])
def test_a_panic_is_a_mark_across_the_timeline(tmp_path: pathlib.Path, message: str) -> None:
    """(A kernel's panic message begins "panic: " already: it was said twice.)"""
    srv, req, path = _machine(tmp_path)
    req(b"B", Op.REPORT, "panic", {"message": message, "cpu": 1, "tid": 5},
        tid=5, t=3_000, posted=True)
    marks = [e for e in _events(srv, path) if e["ph"] == "i"]
    assert [(m["name"], m["pid"], m["s"], m["ts"]) for m in marks] == [("panic: boom", 1, "g",
                                                                         3.0)]


def test_a_timeline_that_cannot_be_written_is_given_up_and_the_launcher_told(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace's writes fail (a full disk) once the machine runs: the requests go on
    (it was an internal error of the request whose event was being written, a fatal
    trap for the kernel), the launcher is told once, the report says why."""
    from helpers import filling_open
    from smp.machine import files                # (the tracer's RunFile opens it)
    monkeypatch.setattr(files, "open", filling_open("trace.json", 12), raising=False)
    srv, req, path = _machine(tmp_path)          # the header and ten names: 11 writes
    req(b"A", Op.DEFTYPE, "thing", [["t_mtx", "lock", "", None]], posted=True)
    for tid in range(1, 4):
        req(b"A", Op.NEW, "thing", {}, tid=tid, t=tid * 1_000)
    said = f"cannot write {path}: No space left on device (the disk is full)"
    sent = srv.sock.sent                          # type: ignore[union-attr]
    told = [unpack(m) for who, m in zip(sent, sent[1:]) if who == b"L"]
    failed = [m for m in told if m[:2] == [Op.EVENT, Event.WRITE_FAILED]]
    assert [m[2] for m in failed] == [said], told
    replies = [unpack(m) for who, m in zip(sent, sent[1:]) if who == b"A"]
    assert len([m for m in replies if m[0] == Op.REPLY and m[2] == OK]) == 3 + 1  # hello
    assert srv.publisher.report()["schedule"]["trace_error"] == said
    srv.seq.close({})                              # nothing more is written, nothing raised


def test_a_trace_whose_end_is_missing_is_not_taken_for_whole(tmp_path: pathlib.Path) -> None:
    """The tracer's last writes happen as the server closes it, after the run's report:
    smp trace looks at the file's end itself (a truncated trace was counted and passed)."""
    from smp.run.replay import _whole_trace
    srv, req, path = _machine(tmp_path)
    srv.seq.close({})
    assert _whole_trace(str(path)) and json.loads(path.read_text())["traceEvents"]
    path.write_bytes(path.read_bytes()[:-5])
    assert not _whole_trace(str(path)) and not _whole_trace(str(tmp_path / "none.json"))


def test_a_finding_is_a_mark_where_it_was_found(tmp_path: pathlib.Path) -> None:
    """A lock order reversal (or any detector's finding) is marked on the timeline at the
    request that found it, on that CPU, with its detector and summary."""
    srv, req, path = _machine(tmp_path)
    a, b = _two_locks(req, (LK_SLEEP, "sleep mutex", "lock A"),
                      (LK_SLEEP, "sleep mutex", "lock B"))
    req(b"A", Op.ACQUIRE, a, EXCL, 0, tid=2, t=1_000)
    req(b"A", Op.ACQUIRE, b, EXCL, 0, tid=2, t=2_000)                 # A -> B
    req(b"A", Op.RELEASE, b, EXCL, tid=2, t=3_000, posted=True)
    req(b"A", Op.RELEASE, a, EXCL, tid=2, t=4_000, posted=True)
    req(b"B", Op.ACQUIRE, b, EXCL, 0, tid=3, t=5_000)
    req(b"B", Op.ACQUIRE, a, EXCL, 0, tid=3, t=6_000)                 # B -> A: reversed
    marks = [(m["name"], m["pid"], m["ts"]) for m in _events(srv, path) if m["ph"] == "i"]
    assert marks == [("[witness] lock order reversal: lock B -> lock A (established: lock A "
                      "-> lock B): 1st @ t.py:1, 2nd @ t.py:1", 1, 6.0)], marks


def test_a_dumps_operations_name_objects_and_addresses(tmp_path: pathlib.Path) -> None:
    """Each CPU's last operations (dump.txt, crash.txt) name the objects, field addresses
    and list elements they touched (``[thing#1, 't_x']``, ``[&thing#1.t_list]``), not
    raw numbers; a freed object keeps its name."""
    srv, req, path = _machine(tmp_path)
    req(b"A", Op.DEFTYPE, "thing", [["t_list", "list", "", None], ["t_x", "int", "", 0]],
        posted=True)
    req(b"A", Op.NEW, "thing", {}, tid=1, t=1_000)
    req(b"A", Op.NEW, "thing", {}, tid=1, t=2_000)
    req(b"A", Op.LIST_INSERT_TAIL, field_addr(1, 0), 2, tid=1, t=3_000, posted=True)
    req(b"A", Op.LIST_FIRST, field_addr(1, 0), tid=1, t=4_000)
    req(b"A", Op.STORE, 2, "t_x", 7, tid=1, t=5_000, posted=True)
    req(b"A", Op.FREE, 2, tid=1, t=6_000, posted=True)
    ops = [(name, args, answer) for _, name, _, _, _, args, answer
           in srv.seq.recent_ops()["0"]]
    _events(srv, path)                                        # (the timeline closed)
    assert ops[-4:] == [("LIST_INSERT_TAIL", "[&thing#1.t_list, thing#2]", ""),
                        ("LIST_FIRST", "[&thing#1.t_list]", "thing#2"),
                        ("STORE", "[thing#2, 't_x', 7]", ""),
                        ("FREE", "[thing#2]", "")], ops
    # a sleep channel at an object's first field is the object (wakeup(&proc0))
    assert srv.kmem.channel(field_addr(1, 0)) == "&thing#1"
    assert srv.kmem.channel(field_addr(1, 1)) == "&thing#1.t_x"
