"""What ``debug.coverage`` costs: the default config with and without it, side by side.

Counting the kernel's lines (a Python call per line run, ``sys.settrace``) costs the CPU
processes host time, not simulated time: the runs do the same work per simulated second,
they take longer. Printed: the medians of the wall time of each, their ratio (the cost),
the requests per wall second of each, and how many lines of ``vm_glue.c`` and of the
kernel the counted runs ran.

    python benchmarks/coverage.py                 # three 10-second runs of each
    python benchmarks/coverage.py --rounds 1 --duration 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(rdir: str, duration: float, *args: str) -> tuple[dict[str, Any], float]:
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.monotonic()
    subprocess.run([sys.executable, "-P", "-m", "smp", "run", "--set",
                    f"run.duration={duration}", *args, "--run-dir", rdir, "--quiet"],
                   capture_output=True, text=True, timeout=1800, env=env, check=False)
    wall = time.monotonic() - t
    with open(os.path.join(rdir, "report.json")) as f:
        return json.load(f), wall


def requests(rep: dict[str, Any]) -> int:
    return sum(c["bus"]["calls"] + c["bus"]["posts"] for c in rep.get("cpus") or []
               if "bus" in c)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each, alternating (default 3): medians")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="simulated seconds a run (default 10)")
    args = ap.parse_args()
    on: list[float] = []
    off: list[float] = []
    rate_on: list[float] = []
    rate_off: list[float] = []
    said: list[str] = []
    with tempfile.TemporaryDirectory(prefix="smpcov-") as tmp:
        for i in range(args.rounds):
            print(f"round {i + 1} of {args.rounds} ...", file=sys.stderr, flush=True)
            r1, w1 = run(os.path.join(tmp, f"on-{i}"), args.duration,
                         "--set", "debug.coverage=true")
            r0, w0 = run(os.path.join(tmp, f"off-{i}"), args.duration)
            on.append(w1)
            off.append(w0)
            rate_on.append(requests(r1) / w1)
            rate_off.append(requests(r0) / w0)
            said = (r1.get("coverage") or {}).get("summary") or said
    m1, m0 = statistics.median(on), statistics.median(off)
    print(f"default config, {args.duration:g} simulated s, {args.rounds} runs of each "
          f"(medians)")
    print(f"  wall s with coverage {m1:.1f}, without {m0:.1f}: {m1 / m0:.2f}x")
    print(f"  requests per wall s with coverage {statistics.median(rate_on):,.0f}, "
          f"without {statistics.median(rate_off):,.0f}")
    for line in said:
        print(f"  {line}")
    print(json.dumps({"wall_s_on": [round(x, 2) for x in on],
                      "wall_s_off": [round(x, 2) for x in off]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
