"""What monitoring costs the machine: simulated work per wall second with the stats stream
on (its default interval) against off, measured in the same run.

Usage: ``python benchmarks/monitoring.py [--runs N] [--duration SIM_S] [--phase SIM_S]
[--set SECTION.KEY=VALUE ...] [--json]``

The machine runs in wall time (``machine.time = "wall"``): the stream is paced by the wall
clock, and so must the phases be. The stream (smp/observe/monitor.py): every CPU posts a sample every ``run.stats_interval`` wall
seconds, the server republishes it and publishes its own, and the launcher writes them to
``stats.jsonl``. To compare with the stream off without comparing two different runs
(these hosts drift by more than the few percent that matter), each run switches the stream
on and off in alternating phases of ``--phase`` simulated seconds, all processes at the
same simulated instant (they share one clock): in an "off" phase the CPUs post no sample
and the server neither builds nor publishes its own, so the launcher records nothing.

* In every CPU process (a SYSINIT handed to ``run_machine``) the CPU's ``_publish`` is
  wrapped: it publishes only in "on" phases, and at each phase boundary it adds, for the
  phase that ended, the work done, the process's CPU time and the CPU time its stream
  code took to kernel counters (``bench_work_p<k>``, ``bench_cpuus_p<k>``,
  ``bench_streamus_p<k>``; they reach report.json like every kernel counter).
* In the server (forked from this process after the patch, so it runs it) ``sample`` and
  ``_publish`` are gated by the same phases and timed; the launcher's ``drain`` is timed.

Two figures:

1. **Throughput** (what the issue asks): work is what the simulated CPUs got done,
   shared-memory requests plus lock acquisitions (``mem_ops + lock_acquires``) summed over
   CPUs. Phases have the same simulated length, so the same wall length; work per phase is
   work per wall second up to that constant. Phase 0 (boot) and the last phase are left
   out. Each "off" phase is paired with the mean of its two neighbouring "on" phases, so a
   workload that grows or shrinks does not bias the ratio; the cost is ``1 - on/off`` from
   the sums over all pairs of all runs, with a bootstrap 95 % interval (pairs resampled)
   and the spread of the per-pair ratios. The machine is latency-bound, not host-bound
   (lock convoys, swap waits, fork storms: work per phase varies fourfold within a run,
   with its CPU time), so the interval is wide: this figure can show a large cost, not
   one of a few percent.
2. **Accounting**: the CPU time of the stream code itself against each process's CPU
   time while the stream is on. The CPUs' figure is exact per phase; the server's sets
   its stream time against its whole CPU time times the share of "on" phases; the
   launcher's (whose work while a run lasts is mostly the stream) is given in ms per wall
   second. This is the figure with little noise; it scales with the sample rate
   (``--set run.stats_interval=0.05`` gives about ten times as much).

Target (the monitoring issue): under 3 % lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

_LAUNCHER_STREAM_S = [0.0]


def _phase_on(sim: float, phase: float) -> bool:
    return int(sim // phase) % 2 == 1          # phase 0 (boot) is off; 1 on, 2 off, ...


def _cpu_gate(phase: float) -> Any:
    """The SYSINIT that gates each CPU's samples and counts, per phase, its work, its
    process CPU time and the CPU time its stream code took."""
    from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SysInit

    def install(_: Any) -> None:
        from smp.kernel.machine import cpu as md
        hw = md.pcpu.hw
        pc = md.pcpu
        publish = hw._publish
        state = {"k": 0, "work": 0, "cpu": time.process_time(), "stream": 0.0}

        def work() -> int:
            return int(hw.counters.mem_ops + hw.counters.lock_acquires)

        def gated() -> None:
            k = int(hw.clock.now() // phase)
            if k != state["k"]:
                w, c = work(), time.process_time()
                j = state["k"]
                pc.count(f"bench_work_p{j}", w - state["work"])
                pc.count(f"bench_cpuus_p{j}", int((c - state["cpu"]) * 1e6))
                pc.count(f"bench_streamus_p{j}", int(state["stream"] * 1e6))
                state.update(k=k, work=w, cpu=c, stream=0.0)
            if k % 2 == 1:
                if time.monotonic() < hw.next_stats:
                    publish()                  # not due: a clock read, not worth timing
                    return
                t = time.process_time()
                publish()
                state["stream"] += time.process_time() - t

        hw._publish = gated

    return SysInit("bench-monitoring-gate", SI_SUB.SI_SUB_KTHREAD_INIT,
                   SI_ORDER["SI_ORDER_FIRST"], install, None, True)


def _patch(phase: float, speed: float) -> None:
    """Gate and time the server's sample and publishing; time the launcher's recording."""
    from smp.machine.publish import Publisher
    from smp.run import launcher
    if getattr(Publisher.publish, "_bench_gated", False):
        return
    publish, sample = Publisher.publish, Publisher.sample
    report, drain = Publisher.report, launcher.StatsRecorder.drain
    spent = [0.0]

    def on(self: Any) -> bool:
        started = self.srv.started_at
        return started is not None and \
            _phase_on((time.monotonic() - started) * speed, phase)

    def gated_publish(self: Any, topic: bytes, payload: Any) -> None:
        if on(self):
            t = time.process_time()
            publish(self, topic, payload)
            spent[0] += time.process_time() - t

    def gated_sample(self: Any) -> dict[str, Any]:
        if not on(self):
            return {}
        t = time.process_time()
        out = sample(self)
        spent[0] += time.process_time() - t
        return out

    def timed_report(self: Any) -> dict[str, Any]:
        r = report(self)
        r.setdefault("server", {}).update(bench_stream_s=spent[0],
                                          bench_cpu_s=time.process_time())
        return r

    def timed_drain(self: Any) -> None:
        t = time.process_time()
        drain(self)
        _LAUNCHER_STREAM_S[0] += time.process_time() - t

    gated_publish._bench_gated = True  # type: ignore[attr-defined]
    Publisher.publish = gated_publish  # type: ignore[method-assign]
    Publisher.sample = gated_sample  # type: ignore[method-assign]
    Publisher.report = timed_report  # type: ignore[method-assign]
    launcher.StatsRecorder.drain = timed_drain  # type: ignore[method-assign]


def one_run(overrides: list[str], phase: float, tmp: str, i: int) -> dict[str, Any]:
    from smp.run.config import load_config
    from smp.run.launcher import run_machine
    cfg = load_config(None, overrides)
    _patch(phase, float(cfg["machine.speed"]))
    _LAUNCHER_STREAM_S[0] = 0.0
    t, self0 = time.monotonic(), time.process_time()
    res = run_machine(cfg, run_dir=os.path.join(tmp, f"run{i}"), log=lambda line: None,
                      sysinits=(_cpu_gate(phase),))
    wall = time.monotonic() - t
    kern = res.report["kernel"]

    def per_phase(prefix: str) -> dict[int, int]:
        return {int(k[len(prefix):]): int(v) for k, v in kern.items() if k.startswith(prefix)}

    srv = res.report.get("server") or {}
    with open(os.path.join(res.run_dir, "stats.jsonl")) as f:
        records = sum(1 for _ in f)
    return {"ok": res.report["ok"], "reason": res.report["reason"], "wall_s": round(wall, 1),
            "sim_s": res.report["duration_sim_s"], "work": per_phase("bench_work_p"),
            "cpu_us": per_phase("bench_cpuus_p"), "stream_us": per_phase("bench_streamus_p"),
            "server_stream_s": float(srv.get("bench_stream_s", 0.0)),
            "server_cpu_s": float(srv.get("bench_cpu_s", 0.0)),
            "launcher_stream_s": _LAUNCHER_STREAM_S[0],
            "launcher_cpu_s": time.process_time() - self0, "records": records,
            "speed": float(cfg["machine.speed"]), "interval": float(cfg["run.stats_interval"])}


def pairs(work: dict[int, int]) -> list[tuple[float, float]]:
    """(mean of the two neighbouring on phases, the off phase) for each off phase k >= 2
    whose neighbours are recorded; the last recorded phase is left out (a CPU may have
    halted before it ended)."""
    last = max(work, default=0)
    return [((work[k - 1] + work[k + 1]) / 2.0, float(work[k]))
            for k in range(2, last, 2)
            if k - 1 in work and k in work and k + 1 in work and k + 1 < last]


def _bootstrap(ps: list[tuple[float, float]], n: int = 2000) -> tuple[float, float]:
    """95 % interval of sum(on)/sum(off), resampling the pairs (fixed seed)."""
    rng = random.Random(1)
    ratios = []
    for _ in range(n):
        pick = [ps[rng.randrange(len(ps))] for _ in ps]
        off = sum(p[1] for p in pick)
        if off > 0:
            ratios.append(sum(p[0] for p in pick) / off)
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def _pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 3) if whole > 0 else None


def summarise(runs: list[dict[str, Any]], phase: float) -> dict[str, Any]:
    ps = [p for r in runs for p in pairs(r["work"])]
    if not ps:
        raise RuntimeError("no complete on/off phase pairs: use a longer --duration or a "
                           "shorter --phase")
    on, off = sum(p[0] for p in ps), sum(p[1] for p in ps)
    ratios = sorted(a / b for a, b in ps if b > 0)
    lo, hi = _bootstrap(ps)
    wall_per_phase = phase / runs[0]["speed"]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    cpu_on = sum(v for r in runs for k, v in r["cpu_us"].items() if k % 2 == 1) / 1e6
    cpu_stream = sum(v for r in runs for k, v in r["stream_us"].items() if k % 2 == 1) / 1e6
    on_share = statistics.mean(
        sum(1 for k in r["cpu_us"] if k % 2 == 1) / max(len(r["cpu_us"]), 1) for r in runs)
    srv_cpu = sum(r["server_cpu_s"] for r in runs) * on_share
    srv_stream = sum(r["server_stream_s"] for r in runs)
    la_stream = sum(r["launcher_stream_s"] for r in runs)
    la_cpu = max(sum(r["launcher_cpu_s"] for r in runs) * on_share, la_stream)
    on_wall = sum(r["wall_s"] for r in runs) * on_share
    return {"pairs": len(ps), "phase_sim_s": phase, "stats_interval_s": runs[0]["interval"],
            "work_per_wall_s_on": round(on / len(ps) / wall_per_phase, 1),
            "work_per_wall_s_off": round(off / len(ps) / wall_per_phase, 1),
            "ratio_on_off": round(on / off, 4), "lost_pct": round(100 * (1 - on / off), 2),
            "lost_pct_95": [round(100 * (1 - hi), 2), round(100 * (1 - lo), 2)],
            "pair_ratio_median": round(statistics.median(ratios), 4),
            "pair_ratio_q1": round(q[0], 4), "pair_ratio_q3": round(q[2], 4),
            "stream_cpu_pct": {
                "cpus": _pct(cpu_stream, cpu_on), "server": _pct(srv_stream, srv_cpu),
                "launcher_ms_per_wall_s": round(1e3 * la_stream / on_wall, 2)
                if on_wall else None,
                "all": _pct(cpu_stream + srv_stream + la_stream, cpu_on + srv_cpu + la_cpu)},
            "runs": [{k: r[k] for k in ("ok", "reason", "wall_s", "sim_s", "records")}
                     for r in runs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="machines to run (default 2)")
    ap.add_argument("--duration", type=float, default=20.0, metavar="SIM_S",
                    help="simulated seconds per run (default 20, the default run)")
    ap.add_argument("--phase", type=float, default=1.0, metavar="SIM_S",
                    help="length of each on/off phase in simulated s (default 1)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    # wall time: the stream's samples are paced by the wall clock, and the phases must
    # be too, so that on and off phases last as long on the host (in virtual time a
    # simulated phase lasts as long as its work takes)
    overrides = ["machine.time=wall", f"run.duration={args.duration}", *args.overrides]
    runs = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smp-bench-mon-") as tmp:
        for i in range(args.runs):
            r = one_run(overrides, args.phase, tmp, i)
            print(f"run {i}: {r['sim_s']} sim s in {r['wall_s']} wall s, "
                  f"{r['records']} stream records, {r['reason']}", file=sys.stderr,
                  flush=True)
            runs.append(r)
    s = summarise(runs, args.phase)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    lo, hi = s["lost_pct_95"]
    c = s["stream_cpu_pct"]
    print(f"monitoring cost: stats stream every {s['stats_interval_s']} wall s vs off, "
          f"alternating every {s['phase_sim_s']} simulated s in the same run "
          f"({s['pairs']} off phases, each against its two neighbouring on phases; "
          f"{len(runs)} run(s), {time.monotonic() - t0:.0f} s)")
    print("  simulated work per wall s (mem requests + lock acquisitions, all CPUs):")
    print(f"    stream on : {s['work_per_wall_s_on']:>10.1f}")
    print(f"    stream off: {s['work_per_wall_s_off']:>10.1f}")
    print(f"  on/off = {s['ratio_on_off']:.4f}: {s['lost_pct']:+.2f} % lost "
          f"(95 % interval {lo:+.1f} .. {hi:+.1f} %; target: under 3 %)")
    print(f"  per-pair ratio median {s['pair_ratio_median']:.3f}, quartiles "
          f"{s['pair_ratio_q1']:.3f}..{s['pair_ratio_q3']:.3f} (the workload is bursty)")
    print(f"  CPU time in the stream code while on: CPU processes {c['cpus']} % and server "
          f"{c['server']} % of their CPU time, launcher {c['launcher_ms_per_wall_s']} ms "
          f"per wall s; all processes {c['all']} % of their CPU time")
    bad = [r for r in s["runs"] if not r["ok"]]
    if bad:
        print(f"  note: {len(bad)} run(s) did not end cleanly: "
              f"{'; '.join(r['reason'] for r in bad)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
