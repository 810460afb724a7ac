"""The server's watchpoint (smp/machine/watch.py, wired by smp/machine/sequencer.py):
``smp replay --watch WHAT``.

In process, no machine: a Server whose socket is a list, driven request by request as two
CPUs would drive it, with ``TimeSpec.watch`` set, as test_trace.py drives the tracer. What
the watch must say: every access of the watched object or field with its operation, CPU,
thread and site, a store's old and new value, the allocation, the free and the moves on
and off lists; a lock watched by name, its contested waits and the grant after the
release that made it; why a WHAT matched nothing; and that a malformed WHAT is refused
before anything starts. ``smp replay --watch`` end to end (a recorded run replayed) is in
test_replay.py.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from smp.cli import main
from helpers import inproc_server
from smp.hw.protocol import EXCL, LK_SPIN, Op, field_addr
from smp.machine.sequencer import TimeSpec
from smp.machine.server import Server
from smp.machine.watch import parse

pytestmark = pytest.mark.quick


def _machine(tmp_path: pathlib.Path, *whats: str) -> tuple[Server, Any, pathlib.Path]:
    path = tmp_path / "watch.txt"
    srv, req = inproc_server(TimeSpec(virtual=True, watch=whats, watch_path=str(path)),
                             detectors={"liveness_s": 0})   # (registered by the kernel)
    req(b"A", Op.DEFTYPE, "proc", [["p_mtx", "lock", "", None], ["p_lock", "int", "", 0],
                                   ["p_flag", "int", "", 0], ["p_list", "list", "", None]],
        posted=True)
    req(b"A", Op.DEFTYPE, "thread", [["td_name", "str", "", ""]], posted=True)
    req(b"A", Op.POLICY, "liveness", {"name": "td_name"}, posted=True)  # threads' names
    return srv, req, path


def _lines(srv: Server, path: pathlib.Path) -> tuple[list[str], list[str]]:
    """The accesses, and the verdicts, of a watch closed with its machine."""
    srv.seq.close({})
    text = path.read_text().splitlines()
    return ([ln for ln in text if ln.startswith("op ")],
            [ln[2:] for ln in text if ln.startswith("# ") and ": " in ln][1:])


def test_a_watched_field_says_who_stored_what_over_what_and_where(
        tmp_path: pathlib.Path) -> None:
    srv, req, path = _machine(tmp_path, "proc#2.p_lock", "proc#2")
    req(b"A", Op.NEW, "thread", {"td_name": "napper"}, tid=0)             # 1
    req(b"A", Op.NEW, "proc", {"p_lock": 0}, tid=1, site="kern/kern_proc.py:183")  # 2
    req(b"A", Op.NEW, "proc", {}, tid=1)                                  # 3: not watched
    req(b"A", Op.STORE, 2, "p_lock", 1, tid=1, posted=True, site="kern/kern_proc.py:90")
    req(b"B", Op.STORE, 3, "p_lock", 7, tid=1, posted=True)               # another proc
    req(b"B", Op.ADD, 2, "p_lock", 2, tid=1, site="vm/vm_glue.py:600")
    req(b"A", Op.LOAD, 2, "p_lock", tid=1)
    req(b"A", Op.LOAD, 2, "p_flag", tid=1)                                # another field
    req(b"B", Op.CAS, 2, "p_lock", 5, 0, tid=1)                           # fails: 3 is not 5
    req(b"B", Op.CAS, 2, "p_lock", 3, 0, tid=1)
    req(b"A", Op.STOREN, 2, {"p_lock": 4, "p_flag": 8}, tid=1, posted=True)
    req(b"A", Op.LIST_INSERT_TAIL, field_addr(3, 3), 2, tid=1, posted=True)
    req(b"A", Op.LIST_REMOVE, field_addr(3, 3), 2, tid=1, posted=True)
    req(b"A", Op.FREE, 2, tid=1, posted=True)
    lines, verdicts = _lines(srv, path)
    field = [re.sub(r"\s+", " ", ln) for ln in lines if "proc#2.p_lock" in ln]
    who = "cpu 0 thread 1 (napper)"
    assert field == [
        f"op 5 {who} alloc proc#2.p_lock = 0 @ kern/kern_proc.py:183",
        f"op 7 {who} store proc#2.p_lock 0 -> 1 @ kern/kern_proc.py:90",
        "op 9 cpu 1 thread 1 (napper) atomic add proc#2.p_lock 1 -> 3 @ vm/vm_glue.py:600",
        f"op 10 {who} load proc#2.p_lock = 3 @ t.py:1",
        "op 12 cpu 1 thread 1 (napper) cas proc#2.p_lock failed: 3 is not 5 @ t.py:1",
        "op 13 cpu 1 thread 1 (napper) cas proc#2.p_lock 3 -> 0 @ t.py:1",
        f"op 14 {who} store proc#2.p_lock 0 -> 4 @ t.py:1",
    ], field
    whole = [re.sub(r"\s+", " ", ln) for ln in lines if "p_lock" not in ln]
    assert whole == [
        f"op 5 {who} alloc proc#2 @ kern/kern_proc.py:183",
        f"op 11 {who} load proc#2.p_flag = 0 @ t.py:1",
        f"op 14 {who} store proc#2.p_flag 0 -> 8 @ t.py:1",
        f"op 15 {who} put on list proc#2 on &proc#3.p_list @ t.py:1",
        f"op 16 {who} taken off list proc#2 from &proc#3.p_list @ t.py:1",
        f"op 17 {who} free proc#2 @ t.py:1",
    ], whole
    assert verdicts == ["proc#2.p_lock: 7 accesses", "proc#2: 12 accesses"]
    stats = srv.publisher.report()["schedule"]["watch"]
    assert stats["events"] == 13 and [w["matched"] for w in stats["watches"]] == [7, 12]


def test_a_lock_watched_by_name_shows_its_waits_and_the_grant_after_the_release(
        tmp_path: pathlib.Path) -> None:
    srv, req, path = _machine(tmp_path, "lock:sched lock", "proc#1.p_mtx")
    req(b"A", Op.NEW, "proc", {}, tid=1)
    lock = field_addr(1, 0)
    req(b"A", Op.LOCK_INIT, lock, LK_SPIN, "spin mutex", "sched lock", 0, posted=True)
    req(b"A", Op.ACQUIRE, lock, EXCL, 0, tid=1, t=1_000, site="kern/kern_synch.py:10")
    req(b"B", Op.ACQUIRE, lock, EXCL, 0, tid=5, t=2_000, site="kern/kern_switch.py:20")
    req(b"A", Op.RELEASE, lock, EXCL, tid=1, t=9_000, posted=True)     # handed to 5
    lines, verdicts = _lines(srv, path)
    what = '"sched lock" (&proc#1.p_mtx)'
    # once each, whether watched as the lock of that name or as proc#1's field; the grant
    # to the spinning waiter follows the release that made it, at its operation
    assert [re.sub(r"\s+", " ", ln) for ln in lines] == [
        f"op 5 cpu 0 thread 0 lock init {what} @ t.py:1",
        f"op 6 cpu 0 thread 1 acquire {what} granted @ kern/kern_synch.py:10",
        f"op 7 cpu 1 thread 5 acquire {what} CONTESTED: waits @ kern/kern_switch.py:20",
        f"op 8 cpu 0 thread 1 release {what} @ t.py:1",
        f"op 8 cpu 1 thread 5 granted {what} (after waiting)",
    ], lines
    assert verdicts == ["lock:sched lock: 4 accesses", "proc#1.p_mtx: 5 accesses"]


def test_a_watch_that_matches_nothing_says_why(tmp_path: pathlib.Path) -> None:
    srv, req, path = _machine(tmp_path, "thread#2", "proc#2.p_nosuch", "proc#99",
                              "lock:Nope", "proc#2.p_flag")
    req(b"A", Op.NEW, "thread", {}, tid=0)
    req(b"A", Op.NEW, "proc", {}, tid=0)
    lines, verdicts = _lines(srv, path)
    assert verdicts == [
        "thread#2: NOTHING MATCHED: object #2 is a proc (proc#2), not a thread",
        "proc#2.p_nosuch: NOTHING MATCHED: a proc has no field 'p_nosuch' (its fields: "
        "p_mtx, p_lock, p_flag, p_list)",
        "proc#99: NOTHING MATCHED: no object #99 was allocated in the 5 operations "
        "replayed (they allocated #1 to #2)",
        "lock:Nope: NOTHING MATCHED: no lock is named 'Nope': this run made none",
        "proc#2.p_flag: 1 accesses",                      # its allocation
    ], verdicts


@pytest.mark.parametrize("what", ["proc", "proc#12.", "proc#0", "&proc#12", "lock:", "12",
                                  "proc#12.p_lock.x"])
def test_a_malformed_watch_is_a_usage_error_before_anything_starts(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    with pytest.raises(ValueError):
        parse(what)
    rdir = tmp_path / "run"
    rdir.mkdir()
    out = tmp_path / "replayed"
    assert main(["replay", str(rdir), "--watch", what, "--run-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smp replay: --watch {what!r}") and "TYPE#N" in err \
        and "lock:NAME" in err, err
    assert not out.exists()                              # nothing started


def test_what_a_watch_takes() -> None:
    assert parse("proc#12") == parse(" proc#12 ")
    s = parse("&vmspace#40.vm_map")
    assert (s.tname, s.handle, s.field, s.lock, s.text) == ("vmspace", 40, "vm_map", None,
                                                            "vmspace#40.vm_map")
    assert parse("lock:process lock").lock == "process lock"
