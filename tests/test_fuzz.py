"""Fuzzing the machine server: whatever a peer sends, the server answers, counts it, goes on.

Two tests, both with hypothesis (strategies for the message shapes; each example is a
batch, expanded with cheap seeded mutations so that 100,000 messages fit in CI time):

* ``test_fuzz_the_server_of_a_running_machine``: a real machine runs (2 CPUs, its kernel
  and user land) while a thread of this process, from identities that never said hello,
  sends the machine's server >= 100,000 bad messages: random bytes, truncated and mutated
  requests, valid msgpack of the wrong shape or types, unknown operations, wrong protocol
  versions, hellos that must be refused (a CPU id in use, a second launcher), multi-frame
  and oversized messages. Each must get exactly one ``ERR`` reply naming a problem. Then
  the kernel (a kthread on cpu 0 waits for the fuzzer's "done" file) runs on for a
  simulated second and shuts down; the run must be clean and the server's statistics
  must count every message.
* ``test_fuzz_the_handlers_of_a_cpu_that_said_hello``: a bare server; a fuzz peer says
  hello as cpu 0 and calls every operation (with a reply: posted errors panic the machine
  by design) with arguments of random types and values. Each call gets exactly one reply.
  Then cpu 1 runs a normal workload on the same server (an object, a sleep mutex, lock
  cycles and loads) and gets the right answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import threading
import time
from typing import Any, Iterator

import hypothesis.strategies as st
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from smp.hw.protocol import (EXCL, GRANTED, LK_SLEEP, MAX_FRAME, VERSION, Event, Op, pack,
                             unpack)

from smp.machine.server import NO_HELLO_REPLIES

from helpers import bare_server, describe, expect_shutdown, sysinit, wait_until

TARGET = 100_000
EXAMPLES = 200
PER_EXAMPLE = 5                  # messages hypothesis draws per example
VARIANTS = 101                   # messages derived from each drawn one (cheap, seeded)
REPLY_TIMEOUT_S = 20.0

_scalar = st.one_of(st.none(), st.booleans(),
                    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=24))
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
_op = st.one_of(st.sampled_from([int(o) for o in Op]), st.integers(-5, 300),
                st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1))
# something that looks like a request: the right length, often the right types
_request = st.tuples(_op, st.one_of(st.integers(0, 1 << 40), _value),
                     st.one_of(st.integers(0, 100), _value),
                     st.one_of(st.text(max_size=20), _value),
                     st.lists(_value, max_size=4)).map(lambda t: [*t[:4], *t[4]])
_hello = st.tuples(st.sampled_from([VERSION, b"SMP0", b"SMP1", "SMP2", None, 1]),
                   st.sampled_from(["cpu", "launcher", "gpu", 0]),
                   st.one_of(st.integers(-2, 4), _value),
                   st.one_of(st.integers(1, 1 << 20), _value)).map(
    lambda t: [int(Op.HELLO), 1, 0, "", *t])
_message = st.one_of(_request, _hello, _value)


def _variants(msg: Any, rnd: random.Random) -> list[bytes]:
    """The drawn message packed, plus mutations: truncations, flipped bytes, raw bytes."""
    try:
        raw = pack(msg)
    except (OverflowError, TypeError, ValueError):
        raw = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 30)))
    out = [raw]
    for k in range(VARIANTS - 1):
        kind = k % 5
        if kind == 0 and len(raw) > 1:
            out.append(raw[:rnd.randrange(1, len(raw))])          # truncated
        elif kind == 1 and raw:
            b = bytearray(raw)
            for _ in range(rnd.randint(1, 3)):
                b[rnd.randrange(len(b))] = rnd.getrandbits(8)     # flipped
            out.append(bytes(b))
        elif kind == 2:
            out.append(rnd.randbytes(rnd.randint(0, 64)))          # random bytes
        elif kind == 3 and isinstance(msg, list) and len(msg) > 1:
            m = list(msg)                                           # fields swapped
            i, j = rnd.randrange(len(m)), rnd.randrange(len(m))
            m[i], m[j] = m[j], m[i]
            try:
                out.append(pack(m))
            except (OverflowError, TypeError, ValueError):
                out.append(raw[::-1])
        else:
            out.append(pack([rnd.choice([int(Op.LOAD), int(Op.ACQUIRE), int(Op.RELEASE),
                                         int(Op.STORE), 999, -1]),
                             rnd.randint(0, 1 << 20), rnd.randint(0, 9), "fuzz:1", 0,
                             rnd.randint(-(1 << 40), 1 << 40)]))  # well-formed, no hello
    return out


class Fuzzer:
    """DEALER sockets with identities that never said hello; counts what comes back.

    The server answers a peer that never said hello NO_HELLO_REPLIES times, then counts
    its errors without answering them (a flood must not queue replies without bound), so
    every identity here sends at most that many messages: a batch goes out in chunks,
    each from a fresh identity (the kind's prefix, then ``#n``)."""

    IDENTS = [b"fuzz0", b"\xff\xfe\x00x", b"cpu99", b"launcher2", b"x" * 200]

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.endpoint = endpoint
        self.made = 0
        self.sent = 0
        self.replies = 0
        self.texts: set[str] = set()

    def _socket(self, which: int) -> Any:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, self.IDENTS[which] + b"#%d" % self.made)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(self.endpoint)
        self.made += 1
        return s

    def batch(self, which: int, frames: list[list[bytes]]) -> None:
        for i in range(0, len(frames), NO_HELLO_REPLIES):
            sock = self._socket(which)
            try:
                self._chunk(sock, frames[i:i + NO_HELLO_REPLIES])
            finally:
                sock.close(0)

    def _chunk(self, sock: Any, frames: list[list[bytes]]) -> None:
        for parts in frames:
            sock.send_multipart(parts)
        self.sent += len(frames)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        for _ in frames:
            if not sock.poll(max(int((deadline - time.monotonic()) * 1000), 1)):
                raise AssertionError(f"no reply within {REPLY_TIMEOUT_S} s "
                                     f"({self.replies} of {self.sent} answered)")
            reply = unpack(sock.recv())
            assert reply[0] == Op.REPLY and reply[2] == 1, reply
            assert isinstance(reply[3], str) and reply[3], reply
            self.texts.add(reply[3].split(":")[0][:40])
            self.replies += 1

    def close(self) -> None:
        self.ctx.term()


def fuzz(endpoint: str, examples: int = EXAMPLES) -> Fuzzer:
    fz = Fuzzer(endpoint)
    per = max(TARGET // (examples * VARIANTS) + 1, PER_EXAMPLE)
    extras = {"done": False}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(msgs=st.lists(_message, min_size=per, max_size=per),
           seed=st.integers(0, 1 << 32), which=st.integers(0, len(Fuzzer.IDENTS) - 1))
    def one(msgs: list[Any], seed: int, which: int) -> None:
        rnd = random.Random(seed)
        frames: list[list[bytes]] = [[f] for m in msgs for f in _variants(m, rnd)]
        if not extras["done"]:                # once: multi-frame and oversized messages
            extras["done"] = True
            frames += [[b"", pack([int(Op.LOAD), 1, 0, "", 0, 1, "x"])], [b"a", b"b", b"c"],
                       [b"\x00" * (MAX_FRAME + 1)]]
        fz.batch(which, frames)

    try:
        one()
    finally:
        fz.close()
    return fz


@pytest.mark.long
@pytest.mark.timeout(150)
def test_fuzz_the_server_of_a_running_machine(run: Any, tmp_path: pathlib.Path) -> None:
    done = tmp_path / "fuzz-done"
    live = tmp_path / "run" / "live.json"
    out: dict[str, Any] = {}

    def coordinator(_: Any) -> None:
        from smp.kernel.kern.kern_kthread import kthread_create
        from smp.kernel.machine import cpu as md

        def body() -> None:
            wait_until(done.exists, "the fuzzer to finish")
            start = md.pcpu.ticks
            wait_until(lambda: md.pcpu.ticks - start >= 100, "a second after the fuzz")
            md.shutdown("fuzzed and ran on")
        if md.pcpu.cpuid == 0:
            kthread_create(body, "fuzzcoord")

    def fuzzer() -> None:
        try:
            deadline = time.monotonic() + 60
            while not live.exists():
                if time.monotonic() > deadline:
                    raise AssertionError("the machine did not start")
                time.sleep(0.02)
            stats = json.loads(live.read_text())["stats"]
            assert stats.startswith("ipc://") and stats.endswith("/stats"), stats
            t0 = time.monotonic()
            fz = fuzz(stats[:-len("stats")] + "bus")
            out.update(sent=fz.sent, replies=fz.replies, texts=fz.texts,
                       took=time.monotonic() - t0)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e
        finally:
            done.write_text("done")

    th = threading.Thread(target=fuzzer, daemon=True)
    th.start()
    try:
        res = run(["machine.cpus=2", "run.duration=600"],
                  sysinits=[sysinit("fuzz-coordinator", coordinator, percpu=True)])
    finally:
        done.write_text("done")
        th.join(30)
    assert "error" not in out, out.get("error")
    assert out["sent"] >= TARGET and out["replies"] == out["sent"], out
    expect_shutdown(res)
    srv = res.report["server"]
    assert srv["bad_messages"] >= out["sent"], srv
    for kind in ("garbage", "shape", "types", "no_hello", "frames", "oversized"):
        assert srv["rejected"].get(kind, 0) > 0, (kind, srv["rejected"])
    assert srv["rejected"].get("crash", 0) == 0, srv["rejected"]
    print(f"fuzz: {out['sent']} messages in {out['took']:.1f} s; rejected "
          f"{srv['rejected']}; run: {describe(res)[:120]}")


@pytest.mark.long
@pytest.mark.timeout(90)
def test_fuzz_the_handlers_of_a_cpu_that_said_hello() -> None:
    with bare_server(2) as (endpoint, server), _dealer(endpoint, b"cpu0") as sock:
        counts = _fuzz_handlers(endpoint, server, sock)
    print(f"handler fuzz: {counts}")


@contextlib.contextmanager
def _dealer(endpoint: str, ident: bytes) -> Iterator[Any]:
    """A raw DEALER socket to the server, with that identity."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, ident)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def _fuzz_handlers(endpoint: str, server: Any, sock: Any) -> dict[str, int]:
    from smp.hw.bus import Bus
    counts = {"sent": 0, "ok": 0, "err": 0}
    sock.send(pack([Op.HELLO, 1, 0, "", 0, VERSION, "cpu", 0, os.getpid()]))
    assert sock.poll(10_000)
    assert unpack(sock.recv())[2] == 0
    seqs = iter(range(2, 1 << 40))
    ops = [int(o) for o in Op if o not in (Op.BYE, Op.REPORT, Op.REPLY, Op.EVENT)]

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(drawn=st.lists(st.tuples(st.sampled_from(ops), st.integers(0, 50),
                                    st.lists(st.one_of(st.integers(-3, 4096), _value),
                                             max_size=5)),
                          min_size=4, max_size=4),
           seed=st.integers(0, 1 << 32))
    def one(drawn: list[Any], seed: int) -> None:
        rnd = random.Random(seed)
        pool = [a for _, _, args in drawn for a in args] + [0, 1, -1, 4096, "", b""]
        calls = list(drawn)
        for _ in range(36):        # every operation, with arguments from the pool
            calls.append((rnd.choice(ops), rnd.randint(0, 50),
                          [rnd.choice(pool) for _ in range(rnd.randint(0, 5))]))
        want = []
        for op, tid, args in calls:
            seq = next(seqs)
            try:
                frame = pack([op, seq, tid, "fuzz:2", 0, *args])
            except (OverflowError, TypeError, ValueError):
                continue
            sock.send(frame)
            want.append(seq)
        counts["sent"] += len(want)
        got = []
        while len(got) < len(want):
            assert sock.poll(int(REPLY_TIMEOUT_S * 1000)), \
                f"no reply: {len(got)} of {len(want)}"
            msg = unpack(sock.recv())
            if msg[0] == Op.REPLY:
                got.append(msg[1])
                counts["ok" if msg[2] == 0 else "err"] += 1
        assert got == want

    one()
    assert server.is_alive()
    assert counts["err"] > counts["sent"] // 2, counts
    # a normal workload on the same server, from the other CPU
    bus = Bus(endpoint, "cpu1")
    try:
        bus.hello("cpu", 1, os.getpid())
        bus.post(Op.DEFTYPE, 0, "", "fzobj", [["m", "lock", "", None], ["x", "int", "", 0]])
        h = bus.call(Op.NEW, 7, "w:1", "fzobj", {})
        addr = (h << 8) | 0
        bus.post(Op.LOCK_INIT, 7, "w:1", addr, LK_SLEEP, "sleep mutex", "fzlock", 0)
        for i in range(200):
            assert bus.call(Op.ACQUIRE, 7, "w:2", addr, EXCL, 0) == GRANTED
            bus.post(Op.STORE, 7, "w:3", h, "x", i)
            assert bus.call(Op.LOAD, 7, "w:4", h, "x") == i
            bus.post(Op.RELEASE, 7, "w:5", addr, EXCL)
        assert bus.call(Op.LOAD, 7, "w:4", h, "x") == 199
    finally:
        bus.close()
    ctl = Bus(endpoint, "launcher")
    try:
        ctl.hello("launcher", -1, os.getpid())
        rep = ctl.call(Op.CTL_REPORT, 0, "")
        ctl.post(Op.BYE, 0, "", "done")
    finally:
        ctl.close()
    assert rep["panic"] is None, rep["panic"]
    assert rep["server"]["rejected"].get("crash", 0) == 0, rep["server"]["rejected"]
    server.join(10)
    assert server.exitcode == 0
    return counts


@pytest.mark.timeout(60)
def test_a_frame_may_batch_posted_requests_before_one_call() -> None:
    """What hw.bus sends: posted requests back to back, then at most one call. A batch
    with a call before its end, or with garbage anywhere, gets exactly one error and
    nothing of it is applied; the server goes on serving."""
    with bare_server(1) as (endpoint, server), _dealer(endpoint, b"cpu0") as sock:
        _batches(server, sock)


def _batches(server: Any, sock: Any) -> None:
    def ask(frame: bytes) -> list[Any]:
        sock.send(frame)
        while True:
            assert sock.poll(10_000), "no reply"
            msg = unpack(sock.recv())
            if msg[0] == Op.REPLY:
                return msg                               # type: ignore[no-any-return]
            assert msg[1] == Event.HEARTBEAT, msg        # a posted request's error

    assert ask(pack([Op.HELLO, 1, 0, "", 0, VERSION, "cpu", 0, os.getpid()]))[2] == 0
    h = ask(pack([Op.DEFTYPE, 0, 0, "", 0, "bt", [["x", "int", "", 0]]])
            + pack([Op.NEW, 2, 7, "b:1", 0, "bt", {}]))[3]
    stores = b"".join(pack([Op.STORE, 0, 7, "b:2", 0, h, "x", i]) for i in range(1, 6))
    assert ask(stores + pack([Op.LOAD, 3, 7, "b:3", 0, h, "x"]))[:4] == [Op.REPLY, 3, 0, 5]
    # a call in the middle: the whole frame is refused, once, and nothing applied
    bad = (pack([Op.STORE, 0, 7, "b:4", 0, h, "x", 99])
           + pack([Op.LOAD, 4, 7, "b:5", 0, h, "x"]) + pack([Op.LOAD, 5, 7, "b:6", 0, h, "x"]))
    rep = ask(bad)
    assert rep[2] == 1 and "batch" in rep[3], rep
    # garbage after good requests, and a truncated last request: refused whole
    for frame in (stores + b"\xc1", stores + pack([Op.LOAD, 6, 7, "b:7", 0, h, "x"])[:-2]):
        rep = ask(frame)
        assert rep[2] == 1 and "msgpack" in rep[3], rep
    # the next reply is this request's: no refused frame got a second reply
    assert ask(pack([Op.LOAD, 7, 7, "b:8", 0, h, "x"]))[:4] == [Op.REPLY, 7, 0, 5]
    assert server.is_alive()
