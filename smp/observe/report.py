"""A run's results: report.json, the crash report, and the summary printed at the end.

``report.json`` has fixed names that other tools read::

    {"ok", "seed", "duration_sim_s", "wall_s",
     "cpus": [{"id", "pid", "ticks": {user, nice, sys, intr, idle, spin}, "ctxsw",
               "lock_acquires", "lock_contested", "mem_ops", ...}],
     "locks": [{"name", "acquires", "contested", "cpus_seen", "max_hold_us",
                "wait_us_total"}],
     "kernel": {counter: value}, "panic": null | {...}}

and may add others (``lock_profile``, ``invariants``, ``problems``, ``server``). ``ok`` is
false when the machine panicked, an invariant failed, a process died, or the run was
interrupted. A panic also writes ``crash.txt`` (smp/observe/crash.py: FreeBSD's panic
message and backtrace, ``show alllocks``, lock chains, every thread's trace). The summary
printed at the end is smp/observe/summary.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

from smp.observe.coverage import Coverage, merge, packed, unpacked
from smp.observe.crash import crash_text
from smp.observe.findings import tag_known
from smp.observe.summary import summary_table  # noqa: F401 - re-exported


def _int_keys(d: dict[Any, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def check_invariants(server: dict[str, Any], kernel: dict[str, int],
                     missing: list[int] | None = None,
                     unchecked: list[str] | None = None) -> list[str]:
    """The end-of-run checks the kernel registered (``invariants``), over the whole
    machine's memory: the sum of a field over every object of a type equals a field of a
    published object (``total``), which equals a counter the CPUs kept (``counter``).
    Each returned line is a failure of the run. A check that needs every CPU's counters
    cannot be made when CPUs ``missing`` sent no final report (killed, or the server
    stopped): it is not made, and a line saying so goes into ``unchecked`` instead of a
    false violation (a CPU that died in its critical section also leaves the objects'
    sum and the total apart).

    A check may name the lock that guards each summed field (``held``): the machine stops
    its threads wherever they are, so a thread that holds that lock may have stored its
    object's increment and not yet added it to the total. The sum may then exceed the
    total by at most the number of those locks held at the stop; a lost update makes it
    fall short."""
    bad: list[str] = []
    for inv in (server.get("policy") or {}).get("invariants", []):
        try:
            name, what = str(inv["name"]), str(inv.get("what", "an invariant failed"))
            sym, tfield = inv["total"]
            stype, sfield = inv["sum"]
        except (KeyError, TypeError, ValueError):
            bad.append(f"a registered invariant is malformed: {inv!r}"[:200])
            continue
        obj = (server.get("symbols") or {}).get(sym)
        if obj is None:
            continue                        # the kernel never published it: nothing to check
        if missing:
            if unchecked is not None:
                unchecked.append(f"{name} invariants not checked: cpu "
                                 f"{', '.join(map(str, missing))} sent no final report")
            continue
        total = obj.get(tfield)
        summed = (server.get("field_sums") or {}).get(stype, {}).get(sfield, 0)
        lock = inv.get("held")
        held = _held(server, str(lock)) if lock else 0
        if not (isinstance(total, int) and total <= summed <= total + held):
            stopped = (f"; {held} {lock} lock{'s' if held != 1 else ''} held at the stop"
                       if lock else "")
            bad.append(f"{name}: the {stype} objects' {sfield} sum to {summed}, but "
                       f"{sym}.{tfield} is {total} ({what}{stopped})")
        counter = inv.get("counter")
        if counter is not None and total != kernel.get(str(counter), 0):
            bad.append(f"{name}: {total} in memory ({sym}.{tfield}), CPUs counted "
                       f"{kernel.get(str(counter), 0)} ({counter})")
    return bad


def _held(server: dict[str, Any], lock: str) -> int:
    """How many locks named ``lock`` some thread held when the machine stopped."""
    return len({ref.get("addr") for t in (server.get("thread_locks") or {}).values()
                for ref in t.get("held") or [] if ref.get("lock") == lock})


def build_report(server: dict[str, Any], *, ncpus: int, seed: int, config: str,
                 reason: str, problems: list[str], notes: list[str] | None = None,
                 wall_s: float, sim_s: float, interrupted: bool,
                 version: str) -> dict[str, Any]:
    """report.json's dict for a machine of ``ncpus`` CPUs run with ``seed`` from the
    config file ``config``, from the server's final report."""
    finals = _int_keys(server.get("cpus") or {})
    pids = _int_keys(server.get("cpu_pids") or {})
    cpus = []
    # the kernel's work counters first, in the order it registered them; every counter
    # it registered is there, zero if unseen (a path never taken shows as 0, not absent)
    registered = (server.get("policy") or {}).get("counters") or {}
    first = [str(c) for c in registered.get("summary", [])]
    kernel: dict[str, int] = dict.fromkeys(first, 0)
    kernel.update({str(c): 0 for c in registered.get("help") or {} if str(c) not in kernel})
    violations: list[str] = []
    findings: list[dict[str, Any]] = list(server.get("findings") or [])
    for cpu in range(ncpus):
        f = finals.get(cpu) or {}
        row = {"id": cpu, "pid": f.get("pid", pids.get(cpu)),
               "ticks": f.get("ticks", {}), "ctxsw": f.get("ctxsw", 0),
               "ctxsw_vol": f.get("ctxsw_vol", 0), "ctxsw_invol": f.get("ctxsw_invol", 0),
               "lock_acquires": f.get("lock_acquires", 0),
               "lock_contested": f.get("lock_contested", 0),
               "mem_ops": f.get("mem_ops", 0), "ipis_sent": f.get("ipis_sent", 0),
               "ipis_received": f.get("ipis_received", 0),
               "interrupts": f.get("interrupts", 0), "bus": f.get("bus", {}),
               "console": (f.get("kernel") or {}).get("console", []),
               "clock": f.get("clock", {}), "reported": bool(f)}
        cpus.append(row)
        for k, v in (f.get("kernel") or {}).items():
            if isinstance(v, int):
                kernel[k] = kernel.get(k, 0) + v
        violations.extend(f"cpu{cpu}: {v}" for v in (f.get("kernel") or {}).get("violations", []))
        findings.extend({"detector": "kernel", "sites": [], **x, "cpu": cpu}
                        for x in (f.get("kernel") or {}).get("findings", []))
    # the same kernel finding seen many times: keep the first, count the rest
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for x in list(findings):
        k = (str(x.get("detector")), str(x.get("summary")))
        if k in seen:
            seen[k]["repeats"] = seen[k].get("repeats", 1) + 1
            findings.remove(x)
        else:
            seen[k] = x
    tag_known(findings)                  # known: "F2", for whoever reads report.json
    missing = [c["id"] for c in cpus if not c["reported"]]
    unchecked: list[str] = []
    invariants = violations + (check_invariants(server, kernel, missing, unchecked)
                               if server else [])
    if not server:
        unchecked.append("end-of-run invariants not checked: the server sent no report")
    notes = [*(notes or []), *unchecked]
    kernel["invariant_violations"] = max(len(invariants), kernel.get("invariant_violations", 0))
    panic = server.get("panic")
    if server and missing and not panic:
        problems = [*problems, f"no final report from cpu {', '.join(map(str, missing))}"]
    ok = (not panic and not invariants and not problems and not interrupted
          and bool(server))
    return {
        "ok": ok, "seed": seed, "version": version,
        "config": config,
        "duration_sim_s": round(sim_s, 3), "wall_s": round(wall_s, 3),
        "reason": reason, "interrupted": interrupted,
        "cpus": cpus,
        "locks": server.get("locks", []),
        "lock_profile": server.get("lock_profile", []),
        "kernel": {**{k: kernel[k] for k in first},
                   **{k: v for k, v in sorted(kernel.items()) if k not in first}},
        "invariants": invariants,
        "findings": findings,
        "liveness": server.get("liveness"),
        "inflight": server.get("inflight"),
        "witness_order": server.get("witness_order", {}),
        "schedule": server.get("schedule", {}),
        "policy": server.get("policy", {}),
        "recent": server.get("recent", {}),
        "procs": server.get("procs"),
        "problems": problems,
        "notes": notes or [],
        "panic": _panic_summary(panic, server) if panic else None,
        "server": {**server.get("server", {}), "memory": server.get("memory", {}),
                   "swap": server.get("swap", {}), "kmem": server.get("kmem", {}),
                   "objects_by_type": server.get("objects_by_type", {})},
        "threads": _threads(finals, server),
        **_lock_wait_stacks(finals, server),
        **_coverage(finals, server),
    }


def _coverage(finals: dict[int, Any], server: dict[str, Any]) -> dict[str, Any]:
    """``coverage`` (smp/observe/coverage.py): the CPUs' line counts summed, and what the
    summary says of them. Absent when no CPU counted."""
    counts = [unpacked(f["coverage"]) for f in finals.values() if f and "coverage" in f]
    if not counts:
        return {}
    merged = merge(counts)
    cov = Coverage(merged, (server.get("policy") or {}).get("sources"))
    return {"coverage": {"counts": packed(merged), "summary": cov.lines()}}


def _lock_wait_stacks(finals: dict[int, Any], server: dict[str, Any]) -> dict[str, Any]:
    """``lock_wait_stacks`` (smp/observe/flame.py), merged from what each CPU's final
    report carries under that key (and the server's, if it has one): the same lock and
    stack summed. Absent when nobody recorded any."""
    merged: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    found = False
    sources = [f.get("lock_wait_stacks") for f in finals.values() if f]
    sources.append(server.get("lock_wait_stacks"))
    # the kernel's record: [lock address, kernel stack, count, seconds], named here from
    # the server's table of every lock that was initialised
    names = server.get("lock_names") or {}
    for f in finals.values():
        waits = ((f or {}).get("kernel") or {}).get("lock_waits")
        if isinstance(waits, list):
            sources.append([{"lock": names.get(str(w[0]), f"lock {w[0]:#x}"),
                             "stack": w[1], "count": w[2], "wait_s": w[3]}
                            for w in waits if isinstance(w, list) and len(w) == 4])
    for recs in sources:
        if not isinstance(recs, list):
            continue
        found = True
        for r in recs:
            key = (str(r.get("lock")), tuple(str(x) for x in r.get("stack") or []))
            m = merged.setdefault(key, {"lock": key[0], "stack": list(key[1]), "count": 0,
                                        "wait_s": 0.0})
            m["count"] += int(r.get("count") or 0)
            m["wait_s"] = round(m["wait_s"] + float(r.get("wait_s") or 0.0), 6)
    if not found:
        return {}
    return {"lock_wait_stacks": sorted(merged.values(),
                                       key=lambda m: (-m["wait_s"], m["lock"], m["stack"]))}


def _threads(finals: dict[int, Any], server: dict[str, Any]) -> list[dict[str, Any]]:
    locks = _int_keys(server.get("thread_locks") or {})
    out = []
    for cpu, f in sorted(finals.items()):
        for t in (f or {}).get("threads", []):
            tl = locks.get(t.get("tid"), {})
            out.append({"cpu": cpu, **t, "held": tl.get("held", []),
                        "waiting": tl.get("waiting")})
    return out


def _panic_summary(panic: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    return {"message": panic.get("message"), "cpu": panic.get("cpu"),
            "tid": panic.get("tid"), "thread": panic.get("thread"),
            "site": panic.get("site"), "stack": panic.get("stack", []),
            "source": panic.get("source"), "sim_time": panic.get("sim_time"),
            **({"op": panic["op"]} if panic.get("op") else {}),
            **({"detector": panic["detector"]} if panic.get("detector") else {})}


def write_run_dir(rdir: str, report: dict[str, Any]) -> None:
    tmp = os.path.join(rdir, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, os.path.join(rdir, "report.json"))
    if report.get("coverage"):
        Coverage(unpacked(report["coverage"].get("counts")),
                 (report.get("policy") or {}).get("sources")).write(rdir)
    if report.get("panic"):
        with open(os.path.join(rdir, "crash.txt"), "w") as f:
            f.write(crash_text(report))
