"""Recording a run, so that it can be replayed exactly (DESIGN.md decision 11).

**What a CPU process takes from outside**, and how each is made reproducible:

1. *Replies* to its requests. The server is the machine's one linearisation point: it
   applies requests one at a time, so the reply to a request is a function of the order in
   which the server handled every request before it. That order is recorded (below) and
   enforced on replay, so the replies are the same.
2. *Events* (lock grants and wake-ups, IPIs, line recalls, the end-of-run check, halts,
   panics). The server sends them as it handles requests (and at a few moments of its own,
   recorded as *actions*), so each CPU receives the same events in the same order. What is
   not fixed is *where in its own execution* a CPU takes them: that depends on when they
   arrive. Every place where a CPU reads its channel other than to wait for a reply is a
   numbered *read point*; the CPU records how many machine messages it read at each read
   point that read any, and on replay reads exactly that many there, waiting for them if
   they are late and reading no more if more are waiting. Messages read while waiting for
   a reply need no record: they are exactly those the server sent before the reply. The
   one event no request causes, START, goes to each CPU once, however often the launcher
   asks for the start (it asks again when the answer is late).
3. *Time.* In virtual time (``hw/clock.py``) a CPU's clock is moved only by its own work and
   by the times that replies and events carry, so it is a function of 1 and 2 (the events
   of the server's own actions carry no time: they are of no request). The horizon
   (the quantum's bound) only decides how long a CPU waits in host time, never what it
   does; a replay ignores it. Wall time cannot be replayed and is not recorded.
4. *Randomness* comes from the run's seed (``hw/seeds.py``): workload choices and chaos.
5. *Control traffic* (heartbeats, pings, time synchronisation, stats samples) changes
   nothing in the machine and is neither recorded nor ordered.
6. *The host*: process ids, host times and host CPU use appear only in reports and the
   stats stream, never in the machine's state.

**The server's record** is the sequence of requests it handled, each as (cpu, op, site,
thread), and the *actions* it took of its own accord between two requests (starting the
end-of-run check, halting the machine, with its reason). The op, site and thread are kept
so that a replay can say exactly where it diverged.

**The file** (``RUN_DIR/schedule.smpr``): a magic line, then one zlib stream of msgpack
records, flushed as it grows and at least once a second (and each CPU sends its read log
as often), so that a run that dies leaves a readable prefix of all but its last second:

* ``["h", header]``: version, protocol, smp version, the config's hash and the config;
* ``["s", {id: site}]``: new source sites, before their first use;
* ``["o", [cpu, op, site_id, tid, ...]]``: the next requests in the order they were handled;
* ``["a", n, kind, payload]``: an action taken after request ``n``;
* ``["r", cpu, [point, count, ...], last, upto]``: a CPU's read log (point deltas), with
  the last read point it reached when that CPU finished (``last`` -1 until then) and the
  read point the log covers so far (``upto``): a record cut short knows how far each CPU's
  reads are known, and a replay stops a CPU there instead of letting it run on unread;
* ``["e", totals]``: the end, with the number of requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from typing import Any, BinaryIO, Iterator

import msgpack

MAGIC = b"SMPREC1\n"
FORMAT = 1
RECORD_FILE = "schedule.smpr"   # the record, in its run directory
CHUNK = 4096                 # order entries (x4 ints) per "o" record
FLUSH_BYTES = 1 << 16        # compressed bytes held back before a flush to the file

# Config keys that change nothing the machine does: a log replays under any value of them.
NEUTRAL_KEYS = ("run.dir", "run.stats_interval", "run.halt_timeout", "run.record",
                "debug.watchdog_s", "debug.coverage", "machine.transport",
                "machine.server_spin")


class LogError(Exception):
    """Not a log, or a log of another version: nothing can be replayed (exit 2)."""


def config_hash(config: dict[str, Any]) -> str:
    """The hash of what in a resolved config decides the machine's behaviour."""
    items = {k: v for k, v in sorted(config.items()) if k not in NEUTRAL_KEYS}
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


class Writer:
    """Streams a run's record into a file, compressed (the server's side)."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.f: BinaryIO = open(path, "wb")
        try:
            self.f.write(MAGIC)
        except OSError:
            self.f.close()
            raise
        self.z = zlib.compressobj(6)
        self.packer = msgpack.Packer(use_bin_type=True)
        self.sites: dict[str, int] = {}
        self.new_sites: dict[int, str] = {}
        self.order: list[int] = []
        self.n = 0                      # requests recorded so far
        self.held = 0
        self.bytes = len(MAGIC)
        self._put(["h", header])

    def _put(self, rec: list[Any]) -> None:
        data = self.z.compress(self.packer.pack(rec))
        if data:
            self.f.write(data)
            self.held += len(data)
            self.bytes += len(data)
            if self.held >= FLUSH_BYTES:
                self.flush()

    def request(self, cpu: int, op: int, site: str, tid: int) -> None:
        sid = self.sites.get(site)
        if sid is None:
            sid = self.sites[site] = len(self.sites)
            self.new_sites[sid] = site
        self.order += (cpu, op, sid, tid)
        self.n += 1
        if len(self.order) >= 4 * CHUNK:
            self._order_out()

    def _order_out(self) -> None:
        # taken before they are written: a write may flush, and a flush writes the order
        # out (written twice, a chunk of 4096 requests stood twice in the record)
        if self.new_sites:
            sites, self.new_sites = self.new_sites, {}
            self._put(["s", sites])
        if self.order:
            order, self.order = self.order, []
            self._put(["o", order])

    def action(self, kind: str, payload: Any) -> None:
        """The server did something of its own accord after the requests so far."""
        self._order_out()
        self._put(["a", self.n, kind, payload])

    def reads(self, cpu: int, entries: list[int], last: int, upto: int) -> None:
        self._put(["r", cpu, entries, last, upto])

    def flush(self) -> None:
        self._order_out()
        data = self.z.flush(zlib.Z_SYNC_FLUSH)
        self.f.write(data)
        self.bytes += len(data)
        self.f.flush()
        self.held = 0

    def close(self, totals: dict[str, Any]) -> None:
        if self.f.closed:
            return
        self._order_out()
        self._put(["e", {"requests": self.n, **totals}])
        data = self.z.flush()
        self.f.write(data)
        self.bytes += len(data)
        self.f.close()

    def abandon(self) -> None:
        """Close the file as it is, without an end (a record given up after a failed
        write: a reader finds it cut short)."""
        try:
            self.f.close()
        except OSError:
            pass


class Record:
    """A run's record, read whole: what a replay enforces."""

    def __init__(self) -> None:
        self.header: dict[str, Any] = {}
        self.sites: dict[int, str] = {}
        self.order: list[int] = []           # cpu, op, site_id, tid per request
        self.actions: dict[int, list[tuple[str, Any]]] = {}   # after request n
        self.reads: dict[int, list[int]] = {}                 # cpu -> [point, count, ...]
        self.last_point: dict[int, int] = {}                  # cpu -> its last read point
        self.covered: dict[int, int] = {}                     # cpu -> reads known up to
        self.totals: dict[str, Any] | None = None             # None: no end (truncated)
        self.damage: str | None = None                        # why reading stopped early

    @property
    def requests(self) -> int:
        return len(self.order) // 4

    def entry(self, i: int) -> tuple[int, int, str, int]:
        """Request ``i`` (0-based): (cpu, op, site, tid)."""
        cpu, op, sid, tid = self.order[4 * i:4 * i + 4]
        return cpu, op, self.sites.get(sid, "?"), tid

    def cpu_reads(self, cpu: int) -> dict[int, int]:
        """The read points of ``cpu`` at which it read anything: point -> count."""
        flat = self.reads.get(cpu, [])
        out: dict[int, int] = {}
        point = 0
        for k in range(0, len(flat) - 1, 2):
            point += flat[k]
            out[point] = flat[k + 1]
        return out

    def read_limit(self, cpu: int) -> int | None:
        """The last read point of ``cpu`` the record knows what was read at, if the
        record stops before that CPU finished (cut short); None: it has them all."""
        if cpu in self.last_point:
            return None
        return self.covered.get(cpu, 0)


def _records(raw: bytes) -> Iterator[Any]:
    up = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                          max_buffer_size=max(len(raw), 1))
    up.feed(raw)
    yield from up


def read(path: str) -> Record:
    """Read a record. Raises :class:`LogError` for a file that is not a record of this
    format; a record that is cut short or damaged is returned as far as it could be read,
    with ``damage`` saying why (a replay then diverges where the record stops)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LogError(f"{path}: cannot read the record: {e.strerror}") from None
    if not data.startswith(MAGIC):
        raise LogError(f"{path}: not a recorded run (no {MAGIC[:-1].decode()} header)")
    rec = Record()
    z = zlib.decompressobj()
    try:
        raw = z.decompress(data[len(MAGIC):])
        if not z.eof:
            rec.damage = "the record is cut short (truncated)"
    except zlib.error as e:
        # keep what decompressed before the damage
        raw = b""
        z2 = zlib.decompressobj()
        body = data[len(MAGIC):]
        for i in range(0, len(body), 4096):
            try:
                raw += z2.decompress(body[i:i + 4096])
            except zlib.error:
                break
        rec.damage = f"the record is damaged ({e})"
    try:
        for item in _records(raw):
            kind = item[0]
            if kind == "h":
                rec.header = item[1]
            elif kind == "s":
                rec.sites.update({int(k): v for k, v in item[1].items()})
            elif kind == "o":
                rec.order.extend(item[1])
            elif kind == "a":
                rec.actions.setdefault(int(item[1]), []).append((item[2], item[3]))
            elif kind == "r":
                rec.reads.setdefault(int(item[1]), []).extend(item[2])
                cpu = int(item[1])
                if item[3] >= 0:
                    rec.last_point[cpu] = int(item[3])
                rec.covered[cpu] = max(rec.covered.get(cpu, 0), int(item[-1]))
            elif kind == "e":
                rec.totals = item[1]
    except Exception as e:  # noqa: BLE001 - a damaged stream: keep the prefix
        rec.damage = rec.damage or f"the record is damaged ({type(e).__name__})"
    if not rec.header:
        raise LogError(f"{path}: not a recorded run (no header)")
    if rec.header.get("format") != FORMAT:
        raise LogError(f"{path}: a record of format {rec.header.get('format')!r}; this smp "
                       f"reads format {FORMAT}")
    if len(rec.order) % 4:
        del rec.order[-(len(rec.order) % 4):]
    if rec.totals is None and rec.damage is None:
        rec.damage = "the record has no end (the run did not finish writing it)"
    return rec


def size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
