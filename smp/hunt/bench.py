"""``smp bench``: the machine's speed in one run, as ratios against baselines of that run.

Three parts, all measured in the same invocation:

* **transport** (``smp/hunt/transport.py``, shipped in the package; ``python
  benchmarks/transport.py`` runs the same measurement alone): the real server
  against a bare ZeroMQ echo server on the same transport (ipc:// in a private directory)
  and against ``multiprocessing.Manager().Lock()``: ``lock_cycle_vs_echo`` (target <= 1.2;
  the CPU keeps the lock's line, hw.bus; ``lock_cycle_no_line_vs_echo`` is the same cycle
  when every acquire asks the server, as when the lock moves between CPUs),
  ``load_vs_echo`` (<= 1.1), ``throughput_4cpu_vs_echo`` (>= 0.8), ``contended_vs_manager``
  (>= 1.2). Ratios are medians of per-round ratios (the hosts are noisy; docs/TRANSPORT.md).
* **machine**: ``configs/default.toml`` run for its duration; ``forks_per_s`` (simulated
  forks per wall second) and ``swap_cycles_per_s`` (swap-outs matched by swap-ins per wall
  second). Figures to track from run to run, not targets.
* **memory**: a short run of the default machine with 1 GiB of simulated physical memory;
  ``server_rss_mb_1g`` is the server's peak RSS (VmHWM) in MiB (must stay under 1.3 GiB).

``smp bench`` prints a table; ``smp bench --json`` one JSON object with every key above
plus ``raw`` figures and ``targets`` (which ratio must be where).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

TARGETS: dict[str, tuple[str, float]] = {
    "lock_cycle_vs_echo": ("<=", 1.2),
    "load_vs_echo": ("<=", 1.1),
    "throughput_4cpu_vs_echo": (">=", 0.8),
    "contended_vs_manager": (">=", 1.2),
    "server_rss_mb_1g": ("<=", 1.3 * 1024),
}


class BenchError(Exception):
    """A part of the benchmark could not run (the text says which and why)."""


def transport(ops: int, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    import shutil
    import statistics
    from smp.hunt import transport as t
    tmp = tempfile.mkdtemp(prefix="smpbench-")
    try:
        per = [t.one_round(tmp, r, ops, max(ops // 10, 20), say) for r in range(rounds)]
    except t.BenchError as e:
        raise BenchError(f"transport: {e}") from e
    finally:
        t._reap(list(t._PROCS), 1.0)
        shutil.rmtree(tmp, ignore_errors=True)
    raw = {k: statistics.median(r[k] for r in per) for k in per[0]}
    rats = [t.ratios(r) for r in per]
    ratio = {k: statistics.median(r[k] for r in rats) for k in rats[0]}
    return {"ratios": ratio, "raw": raw, "spread": {
        k: [round(min(r[k] for r in rats), 3), round(max(r[k] for r in rats), 3)]
        for k in ratio}}


def _machine(overrides: list[str], config: str | None) -> dict[str, Any]:
    from smp.run.config import load_config
    from smp.run.launcher import run_machine
    cfg = load_config(config, overrides)
    with tempfile.TemporaryDirectory(prefix="smpbench-run-") as d:
        res = run_machine(cfg, run_dir=os.path.join(d, "run"), log=lambda line: None)
    r = res.report
    if not r.get("ok"):
        raise BenchError(f"the benchmark machine failed: {r.get('reason')}; "
                         f"{r.get('problems')}")
    return r


def machine(duration: float | None, config: str | None) -> dict[str, Any]:
    r = _machine([f"run.duration={duration}"] if duration is not None else [], config)
    k = r["kernel"]
    wall = float(r["wall_s"])
    cycles = min(int(k.get("swapouts", 0)), int(k.get("swapins", 0)))
    return {"forks_per_s": round(k.get("forks", 0) / wall, 2),
            "swap_cycles_per_s": round(cycles / wall, 3),
            "raw": {"wall_s": wall, "sim_s": r["duration_sim_s"], "forks": k.get("forks"),
                    "swapouts": k.get("swapouts"), "swapins": k.get("swapins")}}


def memory_1g() -> dict[str, Any]:
    r = _machine(["machine.memory=1G", "run.duration=2"], None)
    srv = r["server"]
    return {"server_rss_mb_1g": srv.get("rss_peak_mb") or srv.get("rss_mb"),
            "raw": {"rss_end_mb": srv.get("rss_mb"), "npages": srv["memory"].get("npages")}}


def run(ops: int = 2000, rounds: int = 3, duration: float | None = None,
        config: str | None = None, say: Callable[[str], None] = lambda s: None,
        parts: tuple[str, ...] = ("transport", "machine", "memory")) -> dict[str, Any]:
    out: dict[str, Any] = {"raw": {}, "targets": {k: f"{o} {v}" for k, (o, v) in
                                                   TARGETS.items()}}
    t0 = time.monotonic()
    if "transport" in parts:
        say(f"transport: {rounds} round(s) of {ops} ops per client")
        tr = transport(ops, rounds, say)
        out.update({k: round(v, 4) for k, v in tr["ratios"].items()})
        out["raw"]["transport"] = {k: round(v, 2) for k, v in tr["raw"].items()}
        out["raw"]["spread"] = tr["spread"]
    if "machine" in parts:
        say(f"machine: {config or 'configs/default.toml'}")
        m = machine(duration, config)
        out["forks_per_s"], out["swap_cycles_per_s"] = m["forks_per_s"], m["swap_cycles_per_s"]
        out["raw"]["machine"] = m["raw"]
    if "memory" in parts:
        say("memory: a machine with 1 GiB of physical memory")
        mem = memory_1g()
        out["server_rss_mb_1g"] = mem["server_rss_mb_1g"]
        out["raw"]["memory"] = mem["raw"]
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    out["met"] = {k: _met(out[k], o, v) for k, (o, v) in TARGETS.items() if k in out}
    return out


def _met(x: float, op: str, v: float) -> bool:
    return x <= v if op == "<=" else x >= v


def table(res: dict[str, Any]) -> str:
    rows = [("metric", "value", "target", "met")]
    for key in ("lock_cycle_vs_echo", "lock_cycle_no_line_vs_echo", "load_vs_echo",
                "throughput_1cpu_vs_echo",
                "throughput_2cpu_vs_echo", "throughput_4cpu_vs_echo", "contended_vs_manager",
                "forks_per_s", "swap_cycles_per_s", "server_rss_mb_1g"):
        if key not in res:
            continue
        target = res["targets"].get(key, "(track)")
        met = res["met"].get(key)
        rows.append((key, f"{res[key]:.3f}" if isinstance(res[key], float) else str(res[key]),
                     target, "-" if met is None else ("yes" if met else "NO")))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    tr = res["raw"].get("transport")
    if tr:
        lines.append(f"(echo round trip {tr['echo_rtt_us']:.0f} us, lock cycle "
                     f"{tr['lock_cycle_us']:.0f} us with the line kept, "
                     f"{tr['lock_cycle_no_line_us']:.0f} us asking the server, load "
                     f"{tr['load_us']:.0f} us; "
                     f"Manager lock {tr['manager_ops_s']:.0f}/s vs ours "
                     f"{tr['contended_ops_s']:.0f}/s, 4 cpus on one lock)")
    lines.append(f"({res['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def usage_error(args: Any) -> str | None:
    """What is wrong with ``smp bench``'s options, or None: counts below 1, a --config
    that cannot be loaded, a --duration out of run.duration's range."""
    from smp.run.config import ConfigError, load_config
    for opt, n in (("--ops", args.ops), ("--rounds", args.rounds)):
        if n < 1:
            return f"{opt} must be at least 1, got {n}"
    try:
        cfg = load_config(args.config)
        if args.duration is not None:                  # checked as run.duration is
            cfg.with_values({"run.duration": args.duration}, origin="--duration")
    except ConfigError as e:
        return str(e)
    return None


def main(args: Any) -> int:
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    parts = tuple(args.only) if args.only else ("transport", "machine", "memory")
    wrong = usage_error(args)
    if wrong:
        print(f"smp bench: {wrong}", file=sys.stderr)
        return 2
    try:
        res = run(args.ops, args.rounds, args.duration, args.config, say, parts)
    except BenchError as e:
        print(f"smp bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(res, indent=1) if args.json else table(res))
    return 0
