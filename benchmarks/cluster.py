"""What going through Dask costs a campaign: runs per minute with ``--jobs N`` and with
``--cluster local:N`` on the same host, side by side in one invocation (these hosts are
shared and noisy: only what is measured together is compared).

Each measurement is one ``smp stress`` campaign of ``--runs`` runs of
``configs/stress.toml`` (``--duration`` simulated seconds each, ``--keep-going``, the same
campaign seed, so the same runs), timed two ways:

* end to end: runs per minute of the whole ``smp stress`` command, the start of the
  LocalCluster and the closing included;
* in the campaign: the rate of its last progress line, from the first run's start to the
  last run's end (what a long campaign converges to).

``--rounds`` alternates the two (jobs, cluster, jobs, cluster, ...) and sums them, so that
a host that gets busier or quieter during the measurement weighs on both alike. The ratio
cluster / jobs is the overhead of Dask; the target (issue 17) is at least 0.9.

    python benchmarks/cluster.py                     # --jobs 2 against --cluster local:2
    python benchmarks/cluster.py --workers 1,2,4     # how a campaign scales on this host
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRESS = os.path.join(_ROOT, "configs", "stress.toml")
RATE = re.compile(r"stress: (\d+)/\d+ runs, .* ([\d.]+) runs/min")


def campaign(out: str, runs: int, duration: float, where: list[str]) -> dict[str, float]:
    """One campaign; its runs, wall seconds end to end and the campaign's own rate."""
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-P", "-m", "smp", "stress", STRESS, "--runs", str(runs),
           "--duration", str(duration), "--seed", "11", "--keep-going", "--out", out, *where]
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600,
                       check=False)
    wall = time.monotonic() - t
    rates = RATE.findall(p.stderr)
    if p.returncode not in (0, 1) or not rates or int(rates[-1][0]) != runs:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    done, rate = int(rates[-1][0]), float(rates[-1][1])
    return {"runs": done, "wall_s": wall, "campaign_s": 60.0 * done / rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per campaign (default 10)")
    ap.add_argument("--duration", type=float, default=3.0,
                    help="simulated seconds per run (default 3)")
    ap.add_argument("--workers", default="2",
                    help="N of --jobs N and --cluster local:N, comma-separated (default 2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="campaigns of each kind, alternated (default 1)")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON instead of tables")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="smp-cluster-bench-")
    rows = []
    for n in [int(x) for x in a.workers.split(",")]:
        tot: dict[str, dict[str, float]] = {}
        for r in range(a.rounds):
            for kind, where in (("jobs", ["--jobs", str(n)]),
                                ("cluster", ["--cluster", f"local:{n}"])):
                m = campaign(os.path.join(root, f"{kind}{n}-{r}"), a.runs, a.duration, where)
                t = tot.setdefault(kind, {"runs": 0, "wall_s": 0.0, "campaign_s": 0.0})
                for k in t:
                    t[k] += m[k]
        rows.append({"workers": n, **{f"{kind}_{how}": 60.0 * t["runs"] / t[f"{how}_s"]
                                      for kind, t in tot.items()
                                      for how in ("wall", "campaign")}})
    if a.json:
        print(json.dumps({"runs": a.runs, "duration": a.duration, "rounds": a.rounds,
                          "cores": os.cpu_count(), "rows": rows}, indent=1))
        return 0
    print(f"runs per minute, {a.runs} runs of configs/stress.toml x {a.rounds} round(s), "
          f"{a.duration:g} simulated s each, {os.cpu_count()} cores "
          f"(end to end; in the campaign):")
    for row in rows:
        n = row["workers"]
        print(f"  --jobs {n}: {row['jobs_wall']:.1f}; {row['jobs_campaign']:.1f}   "
              f"--cluster local:{n}: {row['cluster_wall']:.1f}; "
              f"{row['cluster_campaign']:.1f}   ratio cluster/jobs: "
              f"{row['cluster_wall'] / row['jobs_wall']:.2f}; "
              f"{row['cluster_campaign'] / row['jobs_campaign']:.2f} (target >= 0.90)")
    print(f"(run directories under {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
