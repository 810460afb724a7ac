"""The record's file format (hw/record.py) in process: what is written is read back,
once, in order, whatever the size of the run."""

from __future__ import annotations

import pathlib
import random

import pytest

from smp.hw import record

pytestmark = pytest.mark.quick


def test_a_long_record_reads_back_every_request_once_in_order(tmp_path: pathlib.Path) -> None:
    """Enough requests, and random enough to compress badly, that the writer flushes to
    the file while it writes an order chunk out (a chunk of 4096 requests stood twice in
    the record then, and every replay of a run of more than about 65,000 operations
    diverged at operation 4096k + 1)."""
    rng = random.Random(7)
    path = str(tmp_path / "schedule.smpr")
    w = record.Writer(path, {"format": record.FORMAT})
    want = []
    for i in range(60_000):
        e = (rng.randrange(4), rng.randrange(1, 60),
             f"kern/file{rng.randrange(400)}.py:{i % 977}",
             rng.randrange(1 << 20))
        want.append(e)
        w.request(*e)
        if i % 10_000 == 0:
            w.action("final" if i else "start", None)
            w.reads(i % 4, [1, 1, 2, 1], -1, i)
    assert w.bytes > 2 * record.FLUSH_BYTES          # the flushes did happen mid-write
    w.close({"panic": False})
    rec = record.read(path)
    assert rec.damage is None and rec.requests == len(want)
    assert [rec.entry(i) for i in range(len(want))] == want
    assert sorted(rec.actions) == [1, 10_001, 20_001, 30_001, 40_001, 50_001]


def test_a_record_cut_short_says_where_to_stop_whichever_stream_ends_first(
        tmp_path: pathlib.Path) -> None:
    """A record cut short (a killed run's) ends its order or a CPU's reads first, as the
    kill fell between their flushes; either way the divergence offers `--until N`, N the
    last operation the record has (the order's end once had no such hint)."""
    from smp.hw.protocol import Op
    from smp.machine.schedule import Replay
    acq = int(Op.ACQUIRE)
    path = str(tmp_path / "schedule.smpr")
    w = record.Writer(path, {"format": record.FORMAT})
    for i in range(5):
        w.request(i % 2, acq, "kern/kern_mutex.py:80", 100 + i % 2)
    w.reads(0, [3, 1], -1, 4)                    # cpu 0's reads known to its point 4
    w.flush()
    w.abandon()                                   # no end: cut short
    rec = record.read(path)
    assert rec.damage and rec.requests == 5
    r = Replay(rec)
    for i in range(5):
        assert r.check(i % 2, [acq, None, 100 + i % 2, "kern/kern_mutex.py:80"]) is None
        r.i += 1
    d = r.check(1, [acq, None, 101, "kern/kern_mutex.py:80"])
    assert d is not None and d.op == 6, d
    assert d.message.endswith("the record ends after 5 operations, but cpu 1 went on with "
                              "ACQUIRE @ kern/kern_mutex.py:80 (thread 101); the record is "
                              "cut short (truncated); --until 5 stops the machine before it "
                              "and dumps it"), d.message
    d = r.reads_end(0, 5)
    assert d.message.endswith("the record ends for cpu 0, whose reads it has only up to "
                              "read point 4; the record is cut short (truncated); --until 5 "
                              "stops the machine before it and dumps it"), d.message


def test_an_action_s_events_carry_the_same_time_replayed_as_recorded(
        tmp_path: pathlib.Path) -> None:
    """The server's own actions (the end-of-run check, the halt) come between two requests;
    their events carry no request's time. Replayed, the record's "final" action was taken
    just after a request, and FINAL carried that request's time: each CPU's clock jumped
    to it when it took FINAL, where the recorded run's had not, and the run's last
    operations came at other read points (found by a replay of a stress.toml run that
    diverged at its very end: "cpu 3 made RELEASE @ userland/lockload.py:102; the record
    has cpu 3's REPORT")."""
    from smp.hw.protocol import Event, Op, unpack
    from smp.machine.schedule import Replay
    from smp.machine.sequencer import TimeSpec
    from helpers import inproc_server

    ms = 1_000_000
    path = str(tmp_path / record.RECORD_FILE)

    def machine(**kw: object) -> tuple[list[int], object]:
        ts = TimeSpec(virtual=True, quantum_ns=10 * ms, end_ns=100 * ms, **kw)
        srv, req = inproc_server(ts)
        req(b"A", Op.REPORT, "checked", None, t=97 * ms)      # an ordered request ...
        if ts.replay is None:
            req(b"L", Op.CTL_FINAL)                           # ... then the check begins
        sent = srv.sock.sent
        told = [unpack(m) for who, m in zip(sent, sent[1:]) if who in (b"A", b"B")]
        finals = [m[-1] for m in told if m[:2] == [Op.EVENT, Event.FINAL]]
        return finals, srv

    recorded, srv = machine(record_path=path, record_header={"format": record.FORMAT})
    srv.seq.close({"panic": False})                           # type: ignore[attr-defined]
    rec = record.read(path)
    assert rec.actions == {1: [("final", None)]}
    replayed, _ = machine(replay=Replay(rec))
    assert len(recorded) == 2 and replayed == recorded, (recorded, replayed)
