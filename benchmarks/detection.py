"""How well stress campaigns catch each race guard of vm_glue when it is switched off.

For every fail point (``smp failpoints``) and for chaos off and on, the script runs
``--campaigns`` campaigns of ``--runs`` runs each (``configs/stress.toml``, at most
``--duration`` simulated seconds per run) with the guard switched off, and prints:

* the detection rate: in how many campaigns some run failed with a new failure;
* runs needed to detect: the median, over the campaigns that detected, of the index of
  the first failing run (1 = the first run);
* which detectors fired (panic, deadlock, lockkey, witness, invariant, watchdog ...);
* crossed: how often the switched-off guard let a case by (the kernel counter
  ``failpoint_<name>`` of each run, summed): 0 means the race window never opened, so a
  miss says nothing about the detectors. A new failure in a run that never crossed the
  guard is not counted as a detection: it is printed apart (it is something else).

Then the hunts (``HUNTS``): for a known finding of the 2002 code, campaigns with no fail
point on the config that can show it (F1 on ``configs/freebsd-5.0.toml``, the 2002 kernel
as shipped; F2's lost wakeup on ``configs/hunt-f2.toml``), and the runs each needs until
a run reports that finding, found by its detector unaided: the median and how many
campaigns found it at all. A hunt stops its campaign at the first run that reports it.

Then ``--clean-runs`` runs of ``configs/default.toml`` with chaos high and no fail point,
counting new failures (false positives: the target is none) and known findings apart.

Every campaign stops at its first failing run. The whole benchmark is long (hours at the
defaults on a 2-core host); ``--quick`` runs one campaign of three runs per cell.
``--cluster ADDRESS`` takes the measurement on a Dask cluster (``smp stress --cluster``,
see the README), ``--parallel K`` campaigns at a time: with a cluster that runs
``--runs * K`` machines at once, the table takes about as long as one campaign per cell
takes on one host, divided by K.
Targets (issue): every fail point detected in at least 9 of 10 campaigns of 10 runs with
chaos on; no new finding in 200 clean runs with chaos high.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# Guards whose window the 2002 kernel closes by other means (FINDINGS.md, "Notes on the
# guards"): no detector can fire, and the table says why instead of counting a miss.
NOT_DETECTABLE = {"scheduler_recheck": "not detectable under Giant: FINDINGS.md N1"}


# Known findings hunted with no fail point: name -> (known id, detector, config).
HUNTS: dict[str, tuple[str, str, str]] = {
    "F1": ("F1", "kernel", "configs/freebsd-5.0.toml"),
    # F2's lost wakeup, found by the liveness detector as it happens (not the unlocked
    # access lockkey reports statically), on the stress kernel with the user land and the
    # clocks' quantum that open its window most often (configs/hunt-f2.toml says why)
    "F2-hang": ("F2", "liveness", "configs/hunt-f2.toml"),
}


def fail_points() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "smp.cli", "failpoints"], check=True,
                         capture_output=True, text=True).stdout
    return [line.split("\t")[0] for line in out.splitlines() if line.strip()]


def _reports(target: tuple[str, str], path: str) -> bool:
    """Whether the finished run whose ``report.json`` is *path* reports *target*."""
    from smp.observe.findings import classify
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):             # not written yet, or being written
        return False
    return any((x.known, x.detector) == target for x in classify(report))


def _hunt(cmd: list[str], out: str, target: tuple[str, str]) -> tuple[int, str]:
    """Run the campaign *cmd* until a run reports *target*, then stop it (SIGINT, as
    Ctrl-C: it stops its machines): a known finding does not end a campaign by itself,
    and the runs after the first that reports it change nothing in the measurement.
    Returns the campaign's exit status (130 when stopped here) and its stderr."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        seen: set[str] = set()
        while proc.poll() is None:
            time.sleep(2)
            for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
                path = os.path.join(out, name, "report.json")   # written whole (renamed)
                if name in seen or not os.path.exists(path):
                    continue
                seen.add(name)
                if _reports(target, path):
                    proc.send_signal(signal.SIGINT)
                    break
            else:
                continue
            break
        proc.wait()
        err.seek(0)
        return proc.returncode, err.read()


def campaign(config: str, runs: int, seed: int, chaos: str, fail_point: str | None,
             duration: float, jobs: int, out: str,
             cluster: str | None = None,
             target: tuple[str, str] | None = None) -> dict[str, object]:
    """One ``smp stress`` campaign. ``first`` is the first run with a new failure, or,
    given *target* (known id, detector), the first run that reports that known finding."""
    where = ["--cluster", cluster] if cluster else ["--jobs", str(jobs)]
    cmd = [sys.executable, "-m", "smp.cli", "stress", config, "--runs", str(runs), *where,
           "--seed", str(seed), "--chaos", chaos, "--duration", str(duration), "--out", out]
    if fail_point:
        cmd += ["--fail-point", fail_point]
    t = time.monotonic()
    if target is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        status, stderr = proc.returncode, proc.stderr
    else:
        status, stderr = _hunt(cmd, out, target)
    if status == 2:                           # a usage error, or a cluster that cannot be used
        raise SystemExit(f"{' '.join(cmd)}:\n{stderr}")
    detectors = []
    first = None
    known = 0
    done = 0
    crossed = 0          # how often the switched-off guard let a case by, over all runs
    unrelated: list[str] = []   # new failures in runs that never crossed the guard
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, name, "report.json")
        if not os.path.exists(path):
            continue
        done += 1
        from smp.observe.findings import classify
        with open(path) as f:
            report = json.load(f)
        fails = classify(report)
        new = [x for x in fails if x.known is None]
        known += len(fails) - len(new)
        run_crossed = int(report.get("kernel", {}).get(f"failpoint_{fail_point}", 0))
        crossed += run_crossed
        if target is not None:
            if first is None and any((x.known, x.detector) == target for x in fails):
                first = int(name[3:7]) + 1
                detectors = [target[1]]
        elif new and fail_point and not run_crossed:
            # the guard was never crossed in this run: whatever failed, it was not its
            # race; not a detection (and worth a look)
            unrelated.append(f"{name}: " + "; ".join(f"[{x.detector}] {x.summary}"
                                                    for x in new[:2]))
        elif new and first is None:
            first = int(name[3:7]) + 1
            detectors = sorted({x.detector for x in new})
    return {"status": status, "first": first, "detectors": detectors,
            "runs": done, "known": known, "crossed": crossed, "unrelated": unrelated,
            "wall_s": time.monotonic() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--campaigns", type=int, default=10,
                    help="campaigns per fail point (or hunt) and chaos level (default 10)")
    ap.add_argument("--first-campaign", type=int, default=0,
                    help="number of the first campaign (campaign k has seed 1000 + k): "
                         "a long measurement can be taken in parts")
    ap.add_argument("--runs", type=int, default=10,
                    help="runs per campaign (default 10); a hunt stops its campaign at the "
                         "first run that reports the finding")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="simulated seconds per run (default 10)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="runs at a time within a campaign (smp stress --jobs, default 2)")
    ap.add_argument("--clean-runs", type=int, default=200,
                    help="runs of configs/default.toml at chaos high with no fail point, "
                         "for false alarms (default 200; 0: none)")
    ap.add_argument("--fail-point", action="append", default=[],
                    help="only these fail points (default: all)")
    ap.add_argument("--hunt", action="append", choices=sorted(HUNTS), default=[],
                    help="only these hunts of known findings (default: all)")
    ap.add_argument("--no-fail-points", action="store_true",
                    help="no fail point campaigns (only the hunts and the clean runs)")
    ap.add_argument("--no-hunts", action="store_true",
                    help="no hunts of known findings (only the fail points and clean runs)")
    ap.add_argument("--chaos", action="append", choices=("off", "low", "high"), default=[],
                    help="only these chaos levels (default: off and high)")
    ap.add_argument("--quick", action="store_true",
                    help="one campaign of 3 runs per cell, 10 clean runs")
    ap.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run the campaigns on this Dask cluster (smp stress --cluster: "
                    "tcp://HOST:PORT, a scheduler file, or local:N) instead of --jobs")
    ap.add_argument("--parallel", type=int, default=1, metavar="K",
                    help="campaigns at a time (default 1; more pays with --cluster)")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON instead of tables")
    a = ap.parse_args()
    # A hunt stops its campaign with SIGINT (``_hunt``). Started in the background by a
    # shell (``nohup ... &``), this script inherits SIGINT ignored, and so would every
    # campaign it starts: they would run all their runs. A handler here (not inherited:
    # a caught signal is reset to its default at exec) makes them start interruptible.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if a.quick:
        a.campaigns, a.runs, a.clean_runs = 1, 3, 10
    root = tempfile.mkdtemp(prefix="smp-detection-")
    rows = []
    cells = [(fp, chaos) for fp in ([] if a.no_fail_points else a.fail_point or fail_points())
             for chaos in a.chaos or ("off", "high")]
    # a guard no detector can catch (NOT_DETECTABLE) gets one campaign: enough to show
    # that its window is crossed and nothing fires; campaigns end in any order (--parallel)
    todo = {(fp, chaos): 1 if fp in NOT_DETECTABLE else a.campaigns for fp, chaos in cells}
    results: dict[tuple[str, str, int], dict[str, object]] = {}
    with concurrent.futures.ThreadPoolExecutor(max(a.parallel, 1)) as pool:
        futs = {pool.submit(campaign, "configs/stress.toml", a.runs, 1000 + k, chaos, fp,
                            a.duration, a.jobs, os.path.join(root, f"{fp}-{chaos}-{k}"),
                            a.cluster): (fp, chaos, k)
                for (fp, chaos), n in todo.items()
                for k in range(a.first_campaign, a.first_campaign + n)}
        for fut in concurrent.futures.as_completed(futs):
            fp, chaos, k = futs[fut]
            r = results[(fp, chaos, k)] = fut.result()
            print(f"  {fp} chaos={chaos} campaign {k + 1} "
                  f"({k - a.first_campaign + 1} of {todo[(fp, chaos)]}): "
                  f"first failing run {r['first']}, detectors {r['detectors']}",
                  file=sys.stderr, flush=True)
    for (fp, chaos), campaigns in todo.items():
        firsts, dets, crossed = [], collections.Counter(), 0
        unrelated: list[str] = []
        for k in range(a.first_campaign, a.first_campaign + campaigns):
            r = results[(fp, chaos, k)]
            crossed += int(r["crossed"])  # type: ignore[call-overload]
            unrelated += r["unrelated"]  # type: ignore[operator]
            if r["first"] is not None:
                firsts.append(r["first"])
                dets.update(r["detectors"])  # type: ignore[arg-type]
        rows.append({"fail_point": fp, "chaos": chaos,
                     "detected": len(firsts), "campaigns": campaigns,
                     "median_runs_to_detect": statistics.median(firsts) if firsts else None,
                     "detectors": dict(dets), "guard_crossed": crossed,
                     "unrelated_failures": unrelated,
                     "note": NOT_DETECTABLE.get(fp, "")})
    hunts = []
    for name in [] if a.no_hunts else a.hunt or sorted(HUNTS):
        kid, det, config = HUNTS[name]
        for chaos in a.chaos or ("off", "high"):
            firsts = []
            for k in range(a.first_campaign, a.first_campaign + a.campaigns):
                r = campaign(config, a.runs, 1000 + k, chaos, None, a.duration, a.jobs,
                             os.path.join(root, f"hunt-{name}-{chaos}-{k}"), a.cluster,
                             (kid, det))
                if r["first"] is not None:
                    firsts.append(r["first"])
                print(f"  hunt {name} chaos={chaos} campaign {k + 1}: first run reporting "
                      f"{kid} ({det}) {r['first']}", file=sys.stderr, flush=True)
            hunts.append({"hunt": name, "known": kid, "detector": det, "config": config,
                          "chaos": chaos, "found": len(firsts), "campaigns": a.campaigns,
                          "runs_to_first": firsts,
                          "median_runs_to_first": statistics.median(firsts) if firsts
                          else None})
    result: dict[str, object] = {"rows": rows, "hunts": hunts, "clean": None, "dir": root}
    if a.clean_runs:
        clean = campaign("configs/default.toml", a.clean_runs, 7, "high", None, a.duration,
                         a.jobs, os.path.join(root, "clean"), a.cluster)
        result["clean"] = {"runs": clean["runs"], "new_failure_at": clean["first"],
                           "detectors": clean["detectors"], "known_findings": clean["known"]}
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'fail point':32} {'chaos':5} {'detected':>9} {'runs to detect':>15} "
          f"{'crossed':>8}  detectors")
    for r in rows:
        med = r["median_runs_to_detect"]
        print(f"{r['fail_point']:32} {r['chaos']:5} {r['detected']:>4}/{r['campaigns']:<4} "
              f"{'-' if med is None else med:>15} {r['guard_crossed']:>8}  "
              f"{', '.join(f'{k} x{v}' for k, v in sorted(r['detectors'].items())) or '-'}"
              f"{'  (' + r['note'] + ')' if r['note'] else ''}")
    print("(crossed: how often the switched-off guard let a case by, over the campaigns' "
          "runs)")
    for r in rows:
        for u in r["unrelated_failures"]:  # type: ignore[attr-defined]
            print(f"not a detection ({r['fail_point']}, chaos {r['chaos']}: the guard was "
                  f"never crossed in that run): {u}")
    for h in hunts:
        med = h["median_runs_to_first"]
        print(f"hunt {h['hunt']} ({h['detector']}, {h['config']}, no fail point) "
              f"chaos={h['chaos']}: found in {h['found']}/{h['campaigns']} campaigns of "
              f"{a.runs} runs, runs to first detection: median {'-' if med is None else med}"
              f" {h['runs_to_first']}")
    c = result["clean"]
    if isinstance(c, dict):
        at = c["new_failure_at"]
        print(f"clean runs (default config, chaos high): {c['runs']} runs, new failures: "
              f"{'none' if at is None else f'at run {at} ' + str(c['detectors'])}"
              f", known findings reported: {c['known_findings']}")
    print(f"(run directories under {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
