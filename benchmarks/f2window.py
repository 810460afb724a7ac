"""F2's window, counted: how close each wakeup comes to swapout's and faultin's unlocked
read-modify-write of ``td_inhibitors``.

F2's lost wakeup (FINDINGS.md) needs another CPU's store of a thread's ``td_inhibitors``
(a wakeup's ``TD_CLR_SLEEPING``) to reach the server after swapout's ``TD_SET_SWAPPED``
(or faultin's ``TD_CLR_SWAPPED``) has loaded that field and before it stores it back. This
script replays recorded runs (``smp replay``: the same operations in the same order) with
a tracer that logs every load and store of ``td_inhibitors`` and ``td_state``, then, for
each unlocked macro of vm_glue.py, finds its load and its store of ``td_inhibitors`` and
the stores other threads made to the same thread's field around it, and prints:

* windows: how many times each macro ran (a swapout or faultin of a thread), and how many
  server operations, of every CPU, fell between its load and its store (the window);
* hits: other threads' stores of that thread's ``td_inhibitors`` inside a window (each a
  lost update: F2 as it happens);
* the nearest such store before and after each window, in server operations and in
  simulated time: how far the wakeups fell from the window when they missed it.

Usage: ``python benchmarks/f2window.py RUN_DIR ...`` (recorded runs, ``run.record =
true``, the default). It starts one machine at a time, as ``smp replay`` does.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import statistics
import sys
import tempfile
from typing import Any

from smp.hw.protocol import Op
from smp.machine import trace as _trace

FIELDS = ("td_inhibitors", "td_state")
LOG_FILE = "f2window.jsonl"      # the replay's log, kept in the run directory


def _request(self: Any, cpu: int, tid: int, op: int, site: str, t: int, args: list[Any],
             value: Any) -> None:
    _orig(self, cpu, tid, op, site, t, args, value)
    self._f2n = getattr(self, "_f2n", 0) + 1          # this operation's number (traced ops)
    rec = None
    if op in (Op.LOAD, Op.STORE) and len(args) >= 2 and args[1] in FIELDS:
        rec = [self._f2n, cpu, tid, "L" if op == Op.LOAD else "S", site, args[0], args[1],
               value if op == Op.LOAD else args[2], t]
    elif op == Op.STOREN and len(args) >= 2 and isinstance(args[1], dict):
        for f in FIELDS:
            if f in args[1]:
                rec = [self._f2n, cpu, tid, "S", site, args[0], f, args[1][f], t]
    elif op == Op.SLEEP and len(args) >= 3:
        # a thread goes to sleep: its timeout (ticks) and the caller (what program)
        rec = [self._f2n, cpu, tid, "Z", str(args[3]) if len(args) > 3 and args[3] else site,
               tid, "", int(args[2] or 0), t]
    if rec is not None:
        with open(os.environ["SMP_F2WINDOW_LOG"], "a") as f:
            f.write(json.dumps(rec) + "\n")


_orig = _trace.Tracer.request


def hook() -> None:
    """Log the server's traced operations (the replays' servers are forked from here)."""
    _trace.Tracer.request = _request            # type: ignore[method-assign]


def macro_lines() -> dict[int, str]:
    """The lines of vm_glue.py where swapout and faultin use the unlocked macros."""
    import smp.kernel.vm.vm_glue as vg
    with open(vg.__file__) as f:
        src = f.read()
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("TD_SET_SWAPPED", "TD_CLR_SWAPPED"):
            out[node.lineno] = node.func.id
    return out


def analyse(recs: list[list[Any]], lines: dict[int, str]) -> list[dict[str, Any]]:
    def line_of(site: str) -> int | None:
        head = site.split()[0] if site else ""
        if not head.startswith("vm/vm_glue.py:"):
            return None
        return int(head.split(":")[1])

    inh = [r for r in recs if r[6] == "td_inhibitors"]
    recs = [r for r in recs if r[3] == "Z"]
    out = []
    done: set[int] = set()
    for i, r in enumerate(inh):
        ln = line_of(r[4])
        if r[3] != "L" or ln not in lines:
            continue
        # the macro's store: the next store by the same thread at the same line (faultin's
        # TD_CLR_INHIB loads twice; the window is from the last load)
        j = i + 1
        last_load = r
        while j < len(inh) and not (inh[j][2] == r[2] and inh[j][3] == "S"
                                    and inh[j][5] == r[5]):
            if inh[j][2] == r[2] and inh[j][3] == "L" and inh[j][5] == r[5]:
                last_load = inh[j]
            j += 1
        if j >= len(inh):
            continue
        store = inh[j]
        if store[0] in done:
            continue                    # (faultin's second load: the same window)
        done.add(store[0])
        others = [x for x in inh if x[5] == r[5] and x[2] != r[2] and x[3] == "S"]
        hits = [x for x in others if last_load[0] < x[0] < store[0]]
        before = [x for x in others if x[0] < last_load[0]]
        after = [x for x in others if x[0] > store[0]]
        slept = [x for x in recs if x[3] == "Z" and x[2] == r[5] and x[0] < last_load[0]]
        out.append({
            "sleep_site": slept[-1][4] if slept else "", "timo": slept[-1][7] if slept else 0,
            "slept_us": (last_load[8] - slept[-1][8]) / 1000 if slept else None,
            "macro": lines[ln], "thread": r[5], "load_op": last_load[0],
            "loaded": last_load[7], "stored": store[7],
            "window_ops": store[0] - last_load[0] - 1,
            "hits": len(hits),
            "before_ops": last_load[0] - before[-1][0] if before else None,
            "before_us": (last_load[8] - before[-1][8]) / 1000 if before else None,
            "after_ops": after[0][0] - store[0] if after else None,
            "after_us": (after[0][8] - store[8]) / 1000 if after else None,
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="recorded run directories")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON instead of tables")
    ap.add_argument("--windows", action="store_true", help="list every window of a "
                    "thread asleep")
    a = ap.parse_args()
    from smp.run.replay import trace
    hook()
    lines = macro_lines()
    allw: list[dict[str, Any]] = []
    for rd in a.runs:
        log = os.path.join(rd, LOG_FILE)
        if not os.path.exists(log):
            with tempfile.TemporaryDirectory(prefix="smp-f2w-") as tmp:
                os.environ["SMP_F2WINDOW_LOG"] = os.path.join(tmp, LOG_FILE)
                status, _, _ = trace(rd, os.path.join(tmp, "trace.json"))
                if status:
                    print(f"{rd}: the replay diverged; skipped", file=sys.stderr)
                    continue
                os.replace(os.path.join(tmp, LOG_FILE), log)
        with open(log) as f:
            recs = [json.loads(x) for x in f]
        w = analyse(recs, lines)
        for x in w:
            x["run"] = rd
        allw += w
        print(f"{rd}: {len(w)} windows, {sum(x['hits'] for x in w)} hits", file=sys.stderr)
    if a.json:
        print(json.dumps(allw, indent=1))
        return 0
    for macro in ("TD_SET_SWAPPED", "TD_CLR_SWAPPED"):
        ws = [x for x in allw if x["macro"] == macro]
        if not ws:
            print(f"{macro}: no window")
            continue
        asleep = [x for x in ws if x["loaded"] & 0x2]
        near = [min(d for d in (x["before_us"], x["after_us"]) if d is not None)
                for x in asleep if x["before_us"] is not None or x["after_us"] is not None]
        print(f"{macro}: {len(ws)} windows ({len(asleep)} of a thread asleep), "
              f"{sum(x['hits'] for x in ws)} hits; window: median "
              f"{statistics.median(x['window_ops'] for x in ws)} server operations of "
              f"all CPUs (max {max(x['window_ops'] for x in ws)})")
        if near:
            near.sort()
            print(f"  nearest other store of the thread's td_inhibitors (simulated us), "
                  f"asleep threads: min {near[0]:.0f}, median {statistics.median(near):.0f}"
                  f"; within 100 us: {sum(d <= 100 for d in near)}, within 1 ms: "
                  f"{sum(d <= 1000 for d in near)}")
        timed = [x for x in asleep if x["timo"]]
        naps = [x for x in timed if x["timo"] <= 3]
        print(f"  mean window {statistics.mean(x['window_ops'] for x in ws):.2f} operations;"
              f" asleep with a timeout: {len(timed)}, of at most 3 ticks (a napper's): "
              f"{len(naps)}, their next wakeup (us after the window): "
              f"{sorted(x['after_us'] for x in naps if x['after_us'] is not None)}")
        print("  by where they slept: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(collections.Counter(
                x["sleep_site"] or "?" for x in asleep).items())))
        if a.windows:
            for x in asleep:
                print(f"    {x['run']} op {x['load_op']}: thread {x['thread']} asleep @ "
                      f"{x['sleep_site']} (timeout {x['timo']} ticks, {x['slept_us']} us "
                      f"before), window {x['window_ops']} ops, next store of its "
                      f"inhibitors {x['after_us']} us after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
