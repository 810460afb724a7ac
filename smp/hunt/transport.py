"""What a request to the machine server costs, as ratios against baselines of the same run.

Usage: ``smp bench --only transport`` (part of ``smp bench``), ``python -m
smp.hunt.transport [--ops N] [--rounds R] [--json]``, or from a source tree ``python
benchmarks/transport.py ...`` (the same ``main``). It ships inside the package so that
``smp bench`` works after a plain ``pip install``.

Every simulated CPU reaches the shared machine (memory, kernel objects, locks) through one
server over ZeroMQ (``smp/machine/server.py``, ``hw/bus.py``), so the cost of a lock or a load round
trip bounds how fast the simulated kernel can run. This script measures that cost against
what the transport alone costs, all in one run:

* **echo** (the floor): a bare pyzmq + msgpack ROUTER echo server process and DEALER client
  processes over ``ipc://`` in a private temporary directory. Each client sends a small
  msgpack message, the size of an ``ACQUIRE``, and waits for the reply; the server unpacks it
  and packs a reply, as the real server does. Measured: the median round trip with 1 client
  and the total ops/s with 1, 2 and 4 client processes.
* **smp**: the real server (``smp.machine.server.server_main`` in its own process, ``ncpus`` = the
  number of clients) with 1, 2 and 4 client processes, each a CPU (``smp.hw.bus.Bus``, ``HELLO``
  as ``cpu<i>``) that allocates an object with a sleep mutex and an int field:

  - a *lock cycle*: ``ACQUIRE`` (a call: waits for ``GRANTED``, or for ``QUEUED`` and then a
    ``GRANT`` event) followed by a posted ``RELEASE`` (no reply);
  - a *load*: ``LOAD`` of the int field (a call).

  With 1 client: median latency of each against the echo round trip. With 1, 2 and 4
  clients each on its OWN lock (never contended): total lock cycles/s against echo ops/s
  with the same number of clients. With 4 clients on ONE lock: cycles/s against
  ``multiprocessing.Manager().Lock()`` acquire + release cycles/s with 4 processes (the
  obvious off-the-shelf alternative for a lock shared by processes).

Why ratios: these hosts are shared and noisy, so absolute times drift from run to run by
more than the differences that matter (docs/TRANSPORT.md). A baseline measured minutes apart is
no baseline. Each round therefore measures every baseline next to what it is compared with,
each ratio is computed within a round, and the reported ratio is the median over rounds.
Raw numbers are printed too, but only the ratios are meant to be compared between runs.

Reading the ratios (``ours / baseline``): for latencies, 1.0 means "costs one bare round
trip" and higher is slower; for throughputs, 1.0 means "as fast as the bare echo" and lower
is slower; for the contended lock, above 1.0 means faster than the Manager lock.

Throughput is counted over the makespan: the total of all clients' timed operations divided
by the time from the first client's start to the last client's end (clients start together
at a barrier, after a warm-up). Every ZeroMQ context is created in the child after the fork,
every socket has linger 0, every process is joined with a timeout and killed if it stays,
and the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import multiprocess
import zmq

from smp.hw.bus import Bus, BusError, ServerGone
from smp.hw.protocol import (EXCL, GRANTED, LK_SLEEP, QUEUED, VERSION, Event, Op, pack, unpack)
from smp.machine.server import server_main
from smp.machine.proc_util import die_with_parent

SITE = "bench:1"
MEMORY = 1 << 20                 # the server's physical memory and swap: unused, keep small
SWAP = 1 << 16
CLIENT_COUNTS = (1, 2, 4)
CONTENDED_CLIENTS = 4
PHASE_TIMEOUT_S = 60.0           # a phase that takes longer than this is broken, not slow
JOIN_TIMEOUT_S = 5.0

_MP = multiprocess.get_context("fork")
_STD = multiprocessing.get_context("fork")     # the Manager baseline: the stdlib, as named
_PROCS: list[Any] = []           # every process started, for the final clean-up


class BenchError(Exception):
    """A benchmark process failed (the text carries its traceback)."""


# -- timing ------------------------------------------------------------------------------

def _timed(op: Callable[[], Any], n: int) -> dict[str, float]:
    """Run ``op`` ``n`` times; start, end (perf_counter: CLOCK_MONOTONIC, comparable
    between processes of one host) and the median latency in seconds."""
    lat = [0.0] * n
    clock = time.perf_counter
    t0 = clock()
    for k in range(n):
        a = clock()
        op()
        lat[k] = clock() - a
    t1 = clock()
    return {"start": t0, "end": t1, "ops": n, "median": statistics.median(lat)}


def _throughput(results: list[dict[str, Any]], key: str) -> float:
    parts = [r[key] for r in results]
    span = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    return sum(p["ops"] for p in parts) / span


# -- process plumbing --------------------------------------------------------------------

def _start(ctx: Any, target: Callable[..., None], args: tuple[Any, ...], name: str) -> Any:
    p = ctx.Process(target=target, args=args, name=name, daemon=True)
    p.start()
    _PROCS.append(p)
    return p


def _reap(procs: list[Any], timeout: float = JOIN_TIMEOUT_S) -> list[str]:
    """Join each process; terminate, then kill, any that stays. Returns what had to be
    forced (empty when everything exited on its own)."""
    forced = []
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.05))
    for p in procs:
        if p.is_alive():
            forced.append(f"{p.name} (pid {p.pid}) terminated")
            p.terminate()
            p.join(1.0)
        if p.is_alive():
            forced.append(f"{p.name} (pid {p.pid}) killed")
            p.kill()
            p.join(1.0)
        if p in _PROCS:
            _PROCS.remove(p)
    return forced


def _client_main(body: Callable[..., dict[str, Any]], i: int, barrier: Any, q: Any,
                 *args: Any) -> None:
    """A client process: run ``body`` and hand its result (or traceback) to the parent."""
    die_with_parent()
    try:
        q.put(("ok", i, body(i, barrier, *args)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        q.put(("err", i, traceback.format_exc()))


def _run_clients(ctx: Any, body: Callable[..., dict[str, Any]], n: int, label: str,
                 *args: Any) -> list[dict[str, Any]]:
    """Start ``n`` clients running ``body(i, barrier, *args)``; their results by index."""
    barrier = ctx.Barrier(n)
    q = ctx.Queue()
    procs = [_start(ctx, _client_main, (body, i, barrier, q, *args), f"{label}-{i}")
             for i in range(n)]
    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    try:
        while len(results) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: no result within {PHASE_TIMEOUT_S:.0f} s")
            try:
                status, i, value = q.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty: check for a dead client
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(f"{label}: {dead[0].name} died "
                                     f"(exit code {dead[0].exitcode})") from None
                continue
            if status != "ok":
                raise BenchError(f"{label} client {i} failed:\n{value}")
            results[i] = value
    finally:
        _reap(procs)
        q.close()
        q.join_thread()
    return [results[i] for i in range(n)]


# -- the echo baseline -------------------------------------------------------------------

def _echo_server(endpoint: str, stop: Any) -> None:
    die_with_parent()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(50):
                continue
            while True:                      # drain what is queued, as the real server
                try:
                    ident, frame = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = unpack(frame)
                sock.send_multipart([ident, pack([Op.REPLY, msg[1], 0, None, 0, 0, 0])])
    finally:
        sock.close(0)
        ctx.term()


def _echo_client(i: int, barrier: Any, endpoint: str, ops: int,
                 warmup: int) -> dict[str, Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"echo{i}".encode())
    sock.connect(endpoint)
    seq = 0
    tid = 1000 + i

    def rtt() -> None:
        nonlocal seq
        seq += 1
        sock.send(pack([Op.ACQUIRE, seq, tid, SITE, 0, (1 << 8) | 0, EXCL, 0]))
        if not sock.poll(10_000):
            raise BenchError("echo server silent for 10 s")
        if unpack(sock.recv())[1] != seq:
            raise BenchError("echo reply out of order")

    try:
        for _ in range(warmup):
            rtt()
        barrier.wait(PHASE_TIMEOUT_S)
        return {"rtt": _timed(rtt, ops)}
    finally:
        sock.close(0)
        ctx.term()


def bench_echo(tmp: str, tag: str, n: int, ops: int, warmup: int) -> list[dict[str, Any]]:
    endpoint = f"ipc://{tmp}/echo-{tag}.sock"
    stop = _MP.Event()
    server = _start(_MP, _echo_server, (endpoint, stop), f"echo-server-{tag}")
    try:
        return _run_clients(_MP, _echo_client, n, f"echo-{tag}", endpoint, ops, warmup)
    finally:
        stop.set()
        _reap([server])


# -- the real server ---------------------------------------------------------------------

def _wait_grant(bus: Bus, tid: int, addr: int) -> None:
    """Wait for the ``WAKE`` (sleep mutex: try again) or ``GRANT`` (spin: yours) of
    ``addr`` to ``tid`` and take it off the event queue."""
    while True:
        for j, ev in enumerate(bus.events):
            if (ev[0] == Op.EVENT and ev[1] in (Event.GRANT, Event.WAKE) and ev[2] == tid
                    and ev[3] == addr):
                del bus.events[j]
                return
        if bus.events:                       # nothing else is expected on this machine
            raise BenchError(f"unexpected event {bus.events[0]!r}")
        if not bus.poll_events(bus.liveness):
            raise ServerGone(f"no GRANT or WAKE within {bus.liveness:.1f} s")


def _smp_client(i: int, barrier: Any, endpoint: str, ops: int, warmup: int,
                shared_addr: Any, loads: bool, lines: bool = True) -> dict[str, Any]:
    """One CPU. ``shared_addr`` None: its own lock; else CPU 0 makes one lock, publishes its
    address there, and every CPU contends on it. ``lines`` False: the CPU gives every
    line back at once, so that each acquire asks the server (the cost of a lock that
    moves between CPUs)."""
    bus = Bus(endpoint, f"cpu{i}", lines=lines)
    tid = 1000 + i
    queued = 0
    try:
        bus.hello("cpu", i, os.getpid())
        bus.post(Op.DEFTYPE, 0, "", "bench", [["m", "lock", "", None], ["x", "int", "", 0]])
        if shared_addr is None or i == 0:
            h = bus.call(Op.NEW, tid, SITE, "bench", {})
            addr = (h << 8) | 0
            bus.post(Op.LOCK_INIT, tid, SITE, addr, LK_SLEEP, "sleep mutex", "benchlock", 0)
            bus.call(Op.LOAD, tid, SITE, h, "x")    # a fence: the posted init is applied
            if shared_addr is not None:
                shared_addr.value = addr
        bus.give_back_lines()                        # nothing held back while we wait
        barrier.wait(PHASE_TIMEOUT_S)                # the shared lock exists
        if shared_addr is not None:
            addr = shared_addr.value
            h = addr >> 8

        def cycle() -> None:
            nonlocal queued
            r = bus.call(Op.ACQUIRE, tid, SITE, addr, EXCL, 0)
            if r == QUEUED:
                queued += 1
                while r == QUEUED:                   # woken: try again (MTX_CONTESTED)
                    _wait_grant(bus, tid, addr)
                    r = bus.call(Op.ACQUIRE, tid, SITE, addr, EXCL, 0)
            if r != GRANTED:
                raise BenchError(f"ACQUIRE answered {r!r}")
            bus.post(Op.RELEASE, tid, SITE, addr, EXCL)

        def load() -> None:
            bus.call(Op.LOAD, tid, SITE, h, "x")

        for _ in range(warmup):
            cycle()
            if loads:
                load()
        queued = 0
        bus.give_back_lines()                        # nothing held back while we wait
        barrier.wait(PHASE_TIMEOUT_S)
        out: dict[str, Any] = {"cycle": _timed(cycle, ops)}
        out["queued"] = queued
        if loads:
            bus.give_back_lines()                    # nothing held back while we wait
            barrier.wait(PHASE_TIMEOUT_S)
            out["load"] = _timed(load, ops)
        bus.call(Op.LOAD, tid, SITE, h, "x")        # the last RELEASE went through
        if bus.events:
            raise BenchError(f"events left over: {list(bus.events)!r}")
        bus.post(Op.BYE, tid, SITE, "benchmark done")
        return out
    except (BusError, ServerGone) as e:
        raise BenchError(f"cpu{i}: {type(e).__name__}: {e}") from e
    finally:
        bus.close()


def _stop_server(endpoint: str) -> None:
    """Connect as the launcher and say BYE: the server leaves its loop and exits."""
    die_with_parent()
    bus = Bus(endpoint, "launcher", liveness=5.0)
    try:
        bus.hello("launcher", -1, os.getpid())
        bus.post(Op.BYE, 0, "", "benchmark done")
    finally:
        bus.close()


def bench_smp(tmp: str, tag: str, n: int, ops: int, warmup: int, contended: bool,
              loads: bool, lines: bool = True) -> list[dict[str, Any]]:
    endpoint = f"ipc://{tmp}/smp-{tag}.sock"
    server = _start(_MP, server_main, (endpoint, n, MEMORY, SWAP), f"smp-server-{tag}")
    shared = _MP.Value("q", 0) if contended else None
    try:
        res = _run_clients(_MP, _smp_client, n, f"smp-{tag}", endpoint, ops, warmup,
                           shared, loads, lines)
        _reap([_start(_MP, _stop_server, (endpoint,), f"smp-stop-{tag}")])
        server.join(JOIN_TIMEOUT_S)
        if server.exitcode != 0:
            raise BenchError(f"the smp server did not exit cleanly after BYE "
                             f"(exit code {server.exitcode})")
        return res
    finally:
        _reap([server])


# -- the Manager lock baseline -----------------------------------------------------------

def _manager_client(i: int, barrier: Any, lock: Any, ops: int,
                    warmup: int) -> dict[str, Any]:
    def cycle() -> None:
        lock.acquire()
        lock.release()

    for _ in range(warmup):
        cycle()
    barrier.wait(PHASE_TIMEOUT_S)
    return {"cycle": _timed(cycle, ops)}


def bench_manager(n: int, ops: int, warmup: int) -> list[dict[str, Any]]:
    mgr = _STD.Manager()
    try:
        lock = mgr.Lock()
        return _run_clients(_STD, _manager_client, n, "manager", lock, ops, warmup)
    finally:
        mgr.shutdown()


# -- one round, the table ----------------------------------------------------------------

def one_round(tmp: str, r: int, ops: int, warmup: int,
              say: Callable[[str], None]) -> dict[str, float]:
    """Every measurement once, each baseline next to what it is compared with; odd rounds
    run ours first, so that a drift of the host does not always favour the same side."""
    def pair(base: Callable[[], Any], ours: Callable[[], Any]) -> tuple[Any, Any]:
        if r % 2:
            o = ours()
            return base(), o
        b = base()
        return b, ours()

    raw: dict[str, float] = {}
    for n in CLIENT_COUNTS:
        say(f"round {r}: echo and smp, {n} client(s), own locks")
        e, s = pair(lambda: bench_echo(tmp, f"{r}-{n}", n, ops, warmup),
                    lambda: bench_smp(tmp, f"{r}-{n}", n, ops, warmup, contended=False,
                                      loads=n == 1))
        raw[f"echo_ops_s_{n}"] = _throughput(e, "rtt")
        raw[f"lock_ops_s_{n}"] = _throughput(s, "cycle")
        if n == 1:
            raw["echo_rtt_us"] = e[0]["rtt"]["median"] * 1e6
            raw["lock_cycle_us"] = s[0]["cycle"]["median"] * 1e6
            raw["load_us"] = s[0]["load"]["median"] * 1e6
    say(f"round {r}: smp, 1 client, every acquire asking the server (no line kept)")
    s = bench_smp(tmp, f"{r}-noline", 1, ops, warmup, contended=False, loads=False,
                  lines=False)
    raw["lock_cycle_no_line_us"] = s[0]["cycle"]["median"] * 1e6
    n = CONTENDED_CLIENTS
    say(f"round {r}: Manager().Lock() and smp, {n} clients, one lock")
    m, c = pair(lambda: bench_manager(n, ops, warmup),
                lambda: bench_smp(tmp, f"{r}-c{n}", n, ops, warmup, contended=True,
                                  loads=False))
    raw["manager_ops_s"] = _throughput(m, "cycle")
    raw["contended_ops_s"] = _throughput(c, "cycle")
    raw["contended_queued_fraction"] = sum(x["queued"] for x in c) / (n * ops)
    return raw


def ratios(raw: dict[str, float]) -> dict[str, float]:
    out = {"lock_cycle_vs_echo": raw["lock_cycle_us"] / raw["echo_rtt_us"],
           "lock_cycle_no_line_vs_echo": raw["lock_cycle_no_line_us"] / raw["echo_rtt_us"],
           "load_vs_echo": raw["load_us"] / raw["echo_rtt_us"]}
    for n in CLIENT_COUNTS:
        out[f"throughput_{n}cpu_vs_echo"] = raw[f"lock_ops_s_{n}"] / raw[f"echo_ops_s_{n}"]
    out["contended_vs_manager"] = raw["contended_ops_s"] / raw["manager_ops_s"]
    return out


# (ratio key, label, ours key, baseline key, unit, which way is better)
ROWS = [
    ("lock_cycle_vs_echo", "lock cycle latency, 1 cpu", "lock_cycle_us", "echo_rtt_us",
     "us", "lower"),
    ("lock_cycle_no_line_vs_echo", "lock cycle latency, no line kept", "lock_cycle_no_line_us",
     "echo_rtt_us", "us", "lower"),
    ("load_vs_echo", "load latency, 1 cpu", "load_us", "echo_rtt_us", "us", "lower"),
    *[(f"throughput_{n}cpu_vs_echo", f"lock cycles/s, {n} cpu{'s' if n > 1 else ''}, own locks",
       f"lock_ops_s_{n}", f"echo_ops_s_{n}", "/s", "higher") for n in CLIENT_COUNTS],
    ("contended_vs_manager", f"lock cycles/s, {CONTENDED_CLIENTS} cpus, one lock",
     "contended_ops_s", "manager_ops_s", "/s", "higher"),
]


def table(raw: dict[str, float], rat: dict[str, float], rounds: list[dict[str, float]]) -> str:
    lines = [f"{'metric':<36} {'ours':>10} {'baseline':>10} {'ratio':>7}  "
             f"{'spread':>13}  better  baseline is"]
    for key, label, ours, base, unit, better in ROWS:
        each = [ratios(r)[key] for r in rounds]
        spread = f"{min(each):.2f}..{max(each):.2f}" if len(each) > 1 else "-"
        what = "echo round trip" if base.startswith("echo") else "Manager().Lock()"
        lines.append(f"{label:<36} {raw[ours]:>8.0f}{unit:<2} {raw[base]:>8.0f}{unit:<2} "
                     f"{rat[key]:>7.2f}  {spread:>13}  {better:<6}  {what}")
    lines.append(f"(contended: {raw['contended_queued_fraction']:.0%} of acquires queued "
                 f"and waited for a GRANT; ratios are medians of per-round ratios)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000,
                    help="timed operations per client per measurement (default 2000)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of every measurement; ratios are medians (default 3)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if args.ops < 10 or args.rounds < 1:
        ap.error("--ops must be >= 10 and --rounds >= 1")
    warmup = max(args.ops // 10, 20)

    def say(s: str) -> None:
        if not args.json:
            print(s, file=sys.stderr, flush=True)

    tmp = tempfile.mkdtemp(prefix="smpbench-")     # short: ipc paths must be < 108 chars
    t0 = time.monotonic()
    try:
        rounds = [one_round(tmp, r, args.ops, warmup, say) for r in range(args.rounds)]
    except BenchError as e:
        print(f"transport benchmark failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("transport benchmark interrupted", file=sys.stderr)
        return 130
    finally:
        leftovers = _reap(list(_PROCS), 1.0)
        shutil.rmtree(tmp, ignore_errors=True)
        for line in leftovers:
            print(f"clean-up: {line}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    raw = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    per_round = [ratios(r) for r in rounds]
    rat = {k: statistics.median(p[k] for p in per_round) for k in per_round[0]}
    if args.json:
        print(json.dumps({**{k: round(v, 4) for k, v in rat.items()},
                          "raw": {k: round(v, 2) for k, v in raw.items()},
                          "rounds": [{**{k: round(v, 2) for k, v in r.items()},
                                      **{k: round(v, 4) for k, v in ratios(r).items()}}
                                     for r in rounds],
                          "ops": args.ops, "warmup": warmup, "rounds_n": args.rounds,
                          "protocol": VERSION.decode(), "elapsed_s": round(elapsed, 1)},
                         indent=2))
    else:
        print(table(raw, rat, rounds))
        print(f"({args.rounds} round(s) of {args.ops} ops per client, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
