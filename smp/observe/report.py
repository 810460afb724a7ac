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
interrupted. A panic also writes ``crash.txt``: the message, the CPU and thread, the
panicking stack, and every thread's state with the locks it holds and waits for.
"""

from __future__ import annotations

import json
import os
from typing import Any

from smp.run.config import Config


# The kernel counters every report carries (zero when nothing happened), in this order.
KERNEL_COUNTERS = ("forks", "forks_rfmem", "exits", "waits", "swapouts", "swapins",
                   "faultins_swapper", "faultins_phold", "swapin_waits", "vm_waits",
                   "pages_swapped_out", "pages_swapped_in", "checksum_errors", "kernacc",
                   "useracc", "vslock", "invariant_violations")


def _int_keys(d: dict[Any, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def check_invariants(server: dict[str, Any], kernel: dict[str, int],
                     missing: list[int] | None = None,
                     unchecked: list[str] | None = None) -> list[str]:
    """End-of-run checks that need the whole machine's view. Each returned line is a
    failure of the run. A check that needs every CPU's counters cannot be made when CPUs
    ``missing`` sent no final report (killed, or the server stopped): it is not made,
    and a line saying so goes into ``unchecked`` instead of a false violation."""
    bad: list[str] = []
    ll = (server.get("symbols") or {}).get("lockload")
    if ll is not None and missing:
        # the CPUs' counts are incomplete, and a CPU that died in its critical section
        # left the object's count and the total apart: neither check holds
        if unchecked is not None:
            unchecked.append(f"lockload invariants not checked: cpu "
                             f"{', '.join(map(str, missing))} sent no final report")
    elif ll is not None:
        total = ll.get("ll_total")
        counts = (server.get("field_sums") or {}).get("lockobj", {}).get("lo_count", 0)
        incs = kernel.get("lockload_increments", 0)
        if total != counts:
            bad.append(f"lockload: objects count {counts} increments but {total} were "
                       f"made (a lost update: mutual exclusion failed)")
        if total != incs:
            bad.append(f"lockload: {total} increments in memory, CPUs counted {incs}")
    return bad


def build_report(cfg: Config, server: dict[str, Any], *, reason: str, problems: list[str],
                 notes: list[str] | None = None,
                 wall_s: float, sim_s: float, interrupted: bool,
                 version: str) -> dict[str, Any]:
    finals = _int_keys(server.get("cpus") or {})
    pids = _int_keys(server.get("cpu_pids") or {})
    cpus = []
    kernel: dict[str, int] = dict.fromkeys(KERNEL_COUNTERS, 0)
    violations: list[str] = []
    findings: list[dict[str, Any]] = list(server.get("findings") or [])
    for cpu in range(int(cfg["machine.cpus"])):
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
        "ok": ok, "seed": int(cfg["run.seed"]), "version": version,
        "config": cfg.source,
        "duration_sim_s": round(sim_s, 3), "wall_s": round(wall_s, 3),
        "reason": reason,
        "cpus": cpus,
        "locks": server.get("locks", []),
        "lock_profile": server.get("lock_profile", []),
        "kernel": {**{k: kernel[k] for k in KERNEL_COUNTERS},
                   **{k: v for k, v in sorted(kernel.items()) if k not in KERNEL_COUNTERS}},
        "invariants": invariants,
        "findings": findings,
        "witness_order": server.get("witness_order", {}),
        "problems": problems,
        "notes": notes or [],
        "panic": _panic_summary(panic, server) if panic else None,
        "server": {**server.get("server", {}), "memory": server.get("memory", {}),
                   "swap": server.get("swap", {}), "kmem": server.get("kmem", {}),
                   "objects_by_type": server.get("objects_by_type", {})},
        "threads": _threads(finals, server),
    }


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
            "source": panic.get("source")}


def crash_text(report: dict[str, Any]) -> str:
    p = report["panic"]
    lines = [f"panic: {p['message']}",
             f"cpuid = {p['cpu']}; thread {p.get('thread') or '?'} (tid {p.get('tid')})"
             + (f" at {p['site']}" if p.get("site") else ""),
             "", "stack of the panicking thread:"]
    lines += [f"  {s}" for s in p.get("stack", [])]
    lines += ["", "threads:"]
    for t in report["threads"]:
        held = ", ".join(f"{h['lock']} ({h['mode']}) @ {h['site']}" for h in t["held"]) \
            or "none"
        lines.append(f"  cpu{t['cpu']} tid {t['tid']} {t['name']}: holds {held}")
        if t.get("waiting"):
            w = t["waiting"]
            lines.append(f"    waits for {w['lock']} ({w['mode']}) @ {w['site']}")
        for s in t.get("stack", [])[-6:]:
            for part in s.splitlines():
                lines.append(f"      {part}")
    return "\n".join(lines) + "\n"


def write_run_dir(rdir: str, report: dict[str, Any]) -> None:
    tmp = os.path.join(rdir, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, os.path.join(rdir, "report.json"))
    if report.get("panic"):
        with open(os.path.join(rdir, "crash.txt"), "w") as f:
            f.write(crash_text(report))


def summary_table(report: dict[str, Any]) -> str:
    """The per-CPU table and the busiest locks, for the terminal."""
    lines = [f"{'cpu':>3} {'pid':>7} {'user':>6} {'sys':>6} {'intr':>6} {'spin':>6} "
             f"{'idle':>6} {'ctxsw':>7} {'locks':>8} {'contested':>9} {'mem ops':>9}"]
    for c in report["cpus"]:
        t = c["ticks"]
        total = sum(t.values()) or 1
        pct = {k: 100.0 * t.get(k, 0) / total for k in ("user", "sys", "intr", "spin",
                                                         "idle")}
        lines.append(f"{c['id']:>3} {c['pid'] or '-':>7} {pct['user']:>5.1f}% "
                     f"{pct['sys']:>5.1f}% {pct['intr']:>5.1f}% {pct['spin']:>5.1f}% "
                     f"{pct['idle']:>5.1f}% {c['ctxsw']:>7} {c['lock_acquires']:>8} "
                     f"{c['lock_contested']:>9} {c['mem_ops']:>9}")
    lines.append("")
    lines.append(f"{'lock':<16} {'acquires':>9} {'contested':>9} {'cpus':>5} "
                 f"{'max hold us':>12} {'wait us':>12}")
    for lk in sorted(report["locks"], key=lambda r: -r["acquires"])[:8]:
        lines.append(f"{lk['name']:<16} {lk['acquires']:>9} {lk['contested']:>9} "
                     f"{len(lk['cpus_seen']):>5} {lk['max_hold_us']:>12.0f} "
                     f"{lk['wait_us_total']:>12.0f}")
    verdict = "ok" if report["ok"] else "FAILED"
    lines.append("")
    lines.append(f"{verdict}: {report['duration_sim_s']:.1f} simulated s in "
                 f"{report['wall_s']:.1f} wall s, seed {report['seed']} ({report['reason']})")
    if report.get("panic"):
        lines.append(f"panic: {report['panic']['message']} (cpu {report['panic']['cpu']})")
    found = report.get("findings") or []
    if found:
        from smp.hunt.findings import classify
        fails = [f for f in classify(report) if f.detector not in ("panic", "invariant",
                                                                      "machine")]
        new = [f for f in fails if f.known is None]
        lines.append(f"findings: {len(fails)} ({len(new)} new, {len(fails) - len(new)} "
                     f"known; see report.json and FINDINGS.md)")
        for f in (new + [f for f in fails if f.known])[:6]:
            tag = f"known {f.known}" if f.known else "new"
            lines.append(f"  [{f.detector}, {tag}] {f.summary[:110]}")
    for line in report.get("invariants", []) + report.get("problems", []):
        lines.append(f"  - {line}")
    return "\n".join(lines)
