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
