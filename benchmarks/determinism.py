"""Machine time that no host can bend: replay fidelity, host independence, speed and the cost
of recording, each measured in one invocation (these hosts are shared and noisy: what is
compared is measured side by side).

* **Replay fidelity**: failing runs (``configs/stress.toml`` with a race guard switched
  off, over every catchable fail point) and clean runs (``configs/default.toml``), each
  replayed with ``smp replay``: how many replayed identically (kernel counters, per-lock
  acquisitions and contested ones, findings, panic message, site and operation).
* **Host independence** (``independence``: its two parts, ``work`` and ``detection``):
  the default config alone and beside two busy-loop processes: the kernel's work per
  simulated second (forks, swapouts, vm_waits, msleeps, pageout scans), the two side by
  side, and beside them the same runs alone once more: a run's work differs from run to
  run whatever the host does (the CPUs' requests race at the server, as they should), and
  the second alone measurement shows how much (the noise floor the loaded ratio is to be
  read against), as does the band of chance that the quiet runs' spread gives each ratio
  (two standard errors); and detection of two narrow races (``swapout_procs_prs_new``,
  ``faultin_swappingin``) by ten-run campaigns, loaded and unloaded.
* **The quantum**: the default config's work per simulated second at quanta of 1 ms, its
  own 10 ms and 20 ms, and the ratios to 1 ms: what the machine does should not depend on
  how far apart its CPUs' clocks may drift.
* **Speed**: simulated seconds per wall second of the default config, virtual time
  against wall time (``machine.time = "wall"``, speed 0.5); beside them the work each did
  per wall second (requests to the machine, msleeps): the two machines do different
  amounts of work per simulated second, so simulated seconds alone do not compare them;
  campaign runs per minute.
* **Recording**: wall time with and without ``run.record``, and the record's size per
  simulated second.

Targets (issue): identical in 30 of 30; work within 10% and detection within one campaign
loaded and unloaded; virtual at least 2x wall; recording at most 10% more wall time.

    python benchmarks/determinism.py             # everything (about two hours on 2 cores)
    python benchmarks/determinism.py --quick     # a few runs of each (minutes)
    python benchmarks/determinism.py --only speed,record
    python benchmarks/determinism.py --only work --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Self

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:                      # run as a script from anywhere in the tree
    sys.path.insert(0, _ROOT)

from smp.run.replay import compare

WORK = ("forks", "swapouts", "vm_waits", "msleeps", "pageout_scans")
CATCHABLE = ("faultin_swappingin", "swapout_procs_hold_locks", "swapout_procs_map_trylock",
             "swapout_procs_p_system", "swapout_procs_prs_new",
             "swapout_procs_safetoswapout")
STRESS = os.path.join(_ROOT, "configs", "stress.toml")


def smp(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-P", "-m", "smp", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def run(rdir: str, *args: str) -> tuple[dict[str, Any], float]:
    t = time.monotonic()
    smp("run", *args, "--run-dir", rdir, "--quiet")
    wall = time.monotonic() - t
    with open(os.path.join(rdir, "report.json")) as f:
        return json.load(f), wall


def _burn(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i


class Busy:
    """Two busy-loop processes beside the measurement (a loaded host)."""

    def __enter__(self) -> Self:
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_burn, args=(self.stop,), daemon=True)
                      for _ in range(2)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


# -- replay fidelity --------------------------------------------------------------------
def fidelity(tmp: str, failing: int, clean: int, duration: float) -> dict[str, Any]:
    cases: list[str] = []
    seed = 1000
    points = list(CATCHABLE)
    tries = 0
    while len(cases) < failing and tries < failing * 6:
        fp = points[tries % len(points)]
        tries += 1
        seed += 1
        rdir = os.path.join(tmp, f"fail-{fp}-{seed}")
        rep, _ = run(rdir, STRESS, "--fail-point", fp, "--set", f"run.seed={seed}",
                     "--set", f"run.duration={duration}")
        if not rep.get("ok"):
            cases.append(rdir)
            print(f"  failing run {len(cases)}: {fp} seed {seed}: {rep.get('reason')}",
                  file=sys.stderr, flush=True)
    for i in range(clean):
        rdir = os.path.join(tmp, f"clean-{i}")
        run(rdir, "--set", f"run.seed={2000 + i}", "--set", f"run.duration={duration}")
        cases.append(rdir)
    same, diffs = 0, []
    for rdir in cases:
        proc = smp("replay", rdir, "--run-dir", rdir + "-replay")
        try:
            with open(os.path.join(rdir, "report.json")) as f:
                orig = json.load(f)
            with open(os.path.join(rdir + "-replay", "report.json")) as f:
                rep = json.load(f)
            d = compare(orig, rep)
            div = ((rep.get("schedule") or {}).get("replay") or {}).get("divergence")
        except (OSError, ValueError) as e:
            d, div = [f"no replay report: {e}: {proc.stderr[-300:]}"], None
        if not d and not div:
            same += 1
        else:
            diffs.append(f"{os.path.basename(rdir)}: {div['message'] if div else d[:2]}")
        print(f"  replayed {os.path.basename(rdir)}: {'identical' if not d and not div else 'DIFFERS'}",
              file=sys.stderr, flush=True)
    return {"runs": len(cases), "failing": len(cases) - clean, "identical": same,
            "differences": diffs}


# -- host independence --------------------------------------------------------------------
def work(tmp: str, tag: str, seeds: list[int], duration: float, *extra: str,
         runs: list[dict[str, float]] | None = None) -> dict[str, float]:
    """The default config's kernel work per simulated second over ``seeds``; with
    ``requests``, the requests its CPUs made (calls and posts) and ``wall_s``, the wall
    seconds per simulated second. Each run's own work per simulated second is appended
    to ``runs``, if given."""
    tot = dict.fromkeys((*WORK, "requests", "wall_s"), 0.0)
    sim = 0.0
    for s in seeds:
        rep, wall = run(os.path.join(tmp, f"work-{tag}-{s}"), "--set", f"run.seed={s}",
                        "--set", f"run.duration={duration}", *extra)
        d = float(rep.get("duration_sim_s") or duration)
        sim += d
        kernel = rep.get("kernel") or {}
        for k in WORK:
            tot[k] += float(kernel.get(k, 0))
        if runs is not None:
            runs.append({k: float(kernel.get(k, 0)) / d for k in WORK})
        tot["requests"] += sum(c["bus"]["calls"] + c["bus"]["posts"]
                               for c in rep.get("cpus") or [] if "bus" in c)
        tot["wall_s"] += wall
    return {k: round(v / sim, 3) for k, v in tot.items()}


# -- the quantum ------------------------------------------------------------------------
QUANTA = ("1ms", "10ms", "20ms")


def quantum(tmp: str, seeds: list[int], duration: float) -> dict[str, Any]:
    """The default config at quanta of 1 ms, its own 10 ms and 20 ms: the machine's work
    per simulated second should not depend on how far apart the CPUs' clocks may drift
    (an idle CPU never jumps ahead of another: hw/clock.py)."""
    out = {q: work(tmp, f"q{q}", seeds, duration, "--set", f"machine.quantum={q}")
           for q in QUANTA}
    return {"seeds": len(seeds), "duration": duration, "by_quantum": out,
            "ratio_to_1ms": {q: {k: round(v[k] / out[QUANTA[0]][k], 3)
                                 if out[QUANTA[0]][k] else None for k in (*WORK, "requests")}
                             for q, v in out.items()}}


def detection(tmp: str, tag: str, campaigns: int, runs: int, duration: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for fp in ("swapout_procs_prs_new", "faultin_swappingin"):
        caught = 0
        for c in range(campaigns):
            proc = smp("stress", STRESS, "--runs", str(runs), "--seed", str(3000 + c),
                       "--fail-point", fp, "--duration", str(duration), "--jobs", "1",
                       "--out", os.path.join(tmp, f"camp-{tag}-{fp}-{c}"))
            caught += proc.returncode == 1
        out[fp] = caught
    return out


# -- speed and recording ----------------------------------------------------------------
def speed(tmp: str, duration: float, rounds: int) -> dict[str, Any]:
    """Virtual and wall time side by side, ``rounds`` times (alternating, so that a host
    that gets busier or quieter meanwhile weighs on both alike): medians."""
    def per_wall(rep: dict[str, Any], wall: float) -> dict[str, float]:
        reqs = sum(c["bus"]["calls"] + c["bus"]["posts"] for c in rep.get("cpus") or []
                   if "bus" in c)
        return {"sim_s": float(rep.get("duration_sim_s") or 0) / wall,
                "requests": reqs / wall,
                "msleeps": float((rep.get("kernel") or {}).get("msleeps", 0)) / wall}

    virt: list[dict[str, float]] = []
    wall: list[dict[str, float]] = []
    for i in range(rounds):
        virt.append(per_wall(*run(os.path.join(tmp, f"speed-virtual-{i}"), "--set",
                                  f"run.duration={duration}")))
        wall.append(per_wall(*run(os.path.join(tmp, f"speed-wall-{i}"), "--set",
                                  f"run.duration={duration}", "--set", "machine.time=wall",
                                  "--set", "machine.speed=0.5")))

    def med(xs: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(statistics.median(x[k] for x in xs), 3) for k in xs[0]}
    v, w = med(virt), med(wall)
    t = time.monotonic()
    proc = smp("stress", STRESS, "--runs", "4", "--jobs", "2", "--duration", "5",
               "--out", os.path.join(tmp, "speed-campaign"))
    per_min = 4 / ((time.monotonic() - t) / 60)
    return {"rounds": rounds, "virtual_sim_s_per_wall_s": v["sim_s"],
            "wall_sim_s_per_wall_s": w["sim_s"],
            "virtual_vs_wall": round(v["sim_s"] / w["sim_s"], 2) if w["sim_s"] else 0.0,
            "virtual_per_wall_s": v, "wall_per_wall_s": w,
            "all_virtual_sim_s_per_wall_s": [round(x["sim_s"], 3) for x in virt],
            "all_wall_sim_s_per_wall_s": [round(x["sim_s"], 3) for x in wall],
            "campaign_runs_per_min": round(per_min, 1), "campaign_status": proc.returncode}


def recording(tmp: str, duration: float, rounds: int) -> dict[str, float]:
    on, off, size, sim = [], [], [], []
    for i in range(rounds):
        r1, w1 = run(os.path.join(tmp, f"rec-on-{i}"), "--set", f"run.duration={duration}")
        _, w0 = run(os.path.join(tmp, f"rec-off-{i}"), "--set", f"run.duration={duration}",
                     "--set", "run.record=false")
        on.append(w1)
        off.append(w0)
        rec = (r1.get("schedule") or {}).get("record") or {}
        size.append(float(rec.get("bytes", 0)))
        sim.append(float(r1.get("duration_sim_s") or duration))
    return {"wall_s_recorded": round(statistics.median(on), 2),
            "wall_s_unrecorded": round(statistics.median(off), 2),
            "overhead": round(statistics.median(on) / statistics.median(off) - 1, 3),
            "record_kib_per_sim_s": round(statistics.median(size) / 1024
                                          / statistics.median(sim), 1)}


def _ratios(a: dict[str, float], b: dict[str, float]) -> dict[str, float | None]:
    return {k: round(a[k] / b[k], 3) if b[k] else None for k in WORK}


def _chance(runs: list[dict[str, float]], n: int) -> dict[str, float | None]:
    """How far the ratio of two means of ``n`` runs each may stray from 1 by chance alone
    (two standard errors of the ratio), from the spread of the single runs ``runs`` on a
    quiet host: a loaded ratio inside it says nothing of the host."""
    out: dict[str, float | None] = {}
    for k in WORK:
        xs = [r[k] for r in runs]
        m = statistics.mean(xs) if xs else 0.0
        out[k] = (round(2 * statistics.stdev(xs) / m * math.sqrt(2 / n), 3)
                  if m and len(xs) > 1 else None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few runs of each (minutes)")
    ap.add_argument("--only", default="fidelity,independence,quantum,speed,record",
                    help="comma-separated sections: fidelity, independence (= work and "
                    "detection), work, detection, quantum, speed, record (default: all)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="work, quantum: default-config runs per measurement (default 3 "
                    "and 2; --quick 2 and 1)")
    ap.add_argument("--campaigns", type=int, default=None,
                    help="host independence: campaigns per fail point and load (default 5)")
    ap.add_argument("--runs", type=int, default=None,
                    help="host independence: runs per campaign (default 10)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="speed: virtual and wall runs side by side, medians (default 3; "
                    "1 --quick)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "independence" in only:
        only |= {"work", "detection"}
    unknown = only - {"fidelity", "independence", "work", "detection", "quantum", "speed",
                      "record"}
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    q = args.quick
    res: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="smpdet-")
    try:
        if "fidelity" in only:
            print("replay fidelity ...", file=sys.stderr, flush=True)
            res["fidelity"] = fidelity(tmp, 3 if q else 20, 2 if q else 10, 4.0 if q else 8.0)
        if "work" in only:
            print("host independence: work ...", file=sys.stderr, flush=True)
            seeds = list(range(1, 1 + (args.seeds or (2 if q else 3))))
            dur = 6.0 if q else 20.0
            quiet: list[dict[str, float]] = []
            alone = work(tmp, "alone", seeds, dur, runs=quiet)
            with Busy():
                loaded = work(tmp, "loaded", seeds, dur)
            again = work(tmp, "again", seeds, dur, runs=quiet)
            res["work_per_sim_s"] = {"seeds": len(seeds), "alone": alone, "loaded": loaded,
                                     "alone_again": again,
                                     "ratio": _ratios(loaded, alone),
                                     "noise": _ratios(again, alone),
                                     "chance": _chance(quiet, len(seeds))}
        if "detection" in only:
            print("host independence: detection ...", file=sys.stderr, flush=True)
            camps, runs = (1, 3) if q else (5, 10)
            camps = args.campaigns or camps
            runs = args.runs or runs
            d_alone = detection(tmp, "alone", camps, runs, 10.0)
            with Busy():
                d_loaded = detection(tmp, "loaded", camps, runs, 10.0)
            res["detection"] = {"campaigns": camps, "runs": runs, "alone": d_alone,
                                "loaded": d_loaded}
        if "quantum" in only:
            print("the quantum ...", file=sys.stderr, flush=True)
            res["quantum"] = quantum(tmp, list(range(1, 1 + (args.seeds or (1 if q else 2)))),
                                     6.0 if q else 10.0)
        if "speed" in only:
            print("speed ...", file=sys.stderr, flush=True)
            res["speed"] = speed(tmp, 6.0 if q else 20.0, args.rounds or (1 if q else 3))
        if "record" in only:
            print("recording ...", file=sys.stderr, flush=True)
            res["record"] = recording(tmp, 6.0 if q else 20.0, 1 if q else 3)
    finally:
        # the runs of a replay that differed are kept, to be looked at; the rest goes
        if (res.get("fidelity") or {}).get("differences"):
            print(f"(the runs that differed are kept under {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    if "fidelity" in res:
        f = res["fidelity"]
        print(f"replay fidelity: identical in {f['identical']} of {f['runs']} "
              f"({f['failing']} failing runs, {f['runs'] - f['failing']} clean)")
        for d in f["differences"]:
            print(f"  {d}")
    if "work_per_sim_s" in res:
        w = res["work_per_sim_s"]
        print(f"kernel work per simulated second ({w['seeds']} default runs each), alone / "
              f"loaded (two busy loops) / ratio, alone again / its ratio (run-to-run "
              f"spread on the same host), and chance: how far such a ratio strays from 1 "
              f"by chance alone (two standard errors, from the {2 * w['seeds']} quiet runs' "
              f"spread):")
        for k in WORK:
            band = w["chance"][k]
            print(f"  {k:15} {w['alone'][k]:9.2f} {w['loaded'][k]:9.2f} {w['ratio'][k]!s:>6}"
                  f"   {w['alone_again'][k]:9.2f} {w['noise'][k]!s:>6}"
                  f"   {'' if band is None else f'+-{band:.3f}':>8}")
    if "detection" in res:
        d = res["detection"]
        print(f"detection ({d['campaigns']} campaigns of {d['runs']} runs), alone / loaded:")
        for fp in d["alone"]:
            print(f"  {fp:30} {d['alone'][fp]} / {d['loaded'][fp]}")
    if "quantum" in res:
        qr = res["quantum"]
        print(f"work per simulated second by quantum ({qr['seeds']} default runs of "
              f"{qr['duration']:g} s each), and its ratio to 1 ms:")
        print("  " + " " * 15 + "".join(f"{x:>17}" for x in QUANTA))
        for k in (*WORK, "requests", "wall_s"):
            print(f"  {k:15}" + "".join(
                f"{qr['by_quantum'][x][k]:10.2f} {qr['ratio_to_1ms'][x].get(k, '')!s:>6}"
                for x in QUANTA))
    if "speed" in res:
        s = res["speed"]
        print(f"speed ({s['rounds']} rounds, medians): virtual "
              f"{s['virtual_sim_s_per_wall_s']} sim s per wall s, wall "
              f"{s['wall_sim_s_per_wall_s']}: {s['virtual_vs_wall']}x (each round: "
              f"{s['all_virtual_sim_s_per_wall_s']} / {s['all_wall_sim_s_per_wall_s']}); "
              f"campaign runs per minute {s['campaign_runs_per_min']}")
        vw, ww = s["virtual_per_wall_s"], s["wall_per_wall_s"]
        print(f"  per wall second, virtual / wall: requests {vw['requests']:.0f} / "
              f"{ww['requests']:.0f} ({vw['requests'] / ww['requests']:.2f}x), msleeps "
              f"{vw['msleeps']:.1f} / {ww['msleeps']:.1f}")
    if "record" in res:
        r = res["record"]
        print(f"recording: {r['wall_s_recorded']} s recorded, {r['wall_s_unrecorded']} s "
              f"not ({r['overhead']:+.1%}); {r['record_kib_per_sim_s']} KiB per simulated s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
