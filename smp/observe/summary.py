"""The end-of-run summary: what ``smp run`` prints when a run ends and ``smp report RUN_DIR``
prints again. It says what the run was about, in 80 columns.

Laid out with Rich tables rendered to plain text (no colour, no box), so a long lock name
widens its column instead of shifting its row, and the whole fits an 80-column terminal
(counts past a million are written 1.2M). Parts, in order:

* **per CPU**: the share of its clock ticks in user, sys, intr, spin and idle (as ``top -P``
  and ``cp_time``), context switches, lock acquisitions and the contested ones, requests
  to shared memory, and the clock ticks it lost (a tick is lost when the CPU could not take
  it in time: interrupts masked or a long request; in wall time also a busy host);
* **the kernel's work**: forks, exits and waits; PHOLDs and vm_waits; processes swapped
  out and in, pages written to swap and read back (and how many of those reads were page
  faults); the invariant checks and how many failed;
* **locks**, the one that cost the most first (sorted by wait, then contested
  acquisitions), with the unit of the wait said once: the machine's seconds (simulated
  in virtual time, host seconds in wall time: the lock table's clock), summed over the
  waiting threads (several threads waiting at once all count, so it can exceed the run's
  length; LOCK_PROFILING's ``wait_total``);
* **what went wrong**: the panic (``panic: <message>``, ``cpuid = N``, as FreeBSD prints it),
  new findings one line each, known findings of the 2002 code one line in all (``known:
  F2 x6``), failed invariants and problems of the machine;
* **the verdict**, last: ``ok``, ``FAILED``, or ``stopped by SIGINT`` (a partial report),
  the simulated and wall time, the seed and why it ended.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from smp.machine.sites import annotate
from smp.observe.findings import Failure, classify, grouped

WIDTH = 80
CPU_MODES = ("user", "sys", "intr", "spin", "idle")
TOP_LOCKS = 8
NEW_FINDINGS_SHOWN = 6
CONSOLE_SHOWN = 6          # kernel console lines in the summary


def render(parts: Iterable[Any], width: int = WIDTH) -> str:
    """Rich renderables as plain text ``width`` columns wide (trailing blanks cut)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      highlight=False, emoji=False, markup=False, legacy_windows=False)
    for part in parts:
        console.print(part)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def count(n: Any) -> str:
    """A count in at most 6 characters: exact below a million, then 1.2M, 3.4G."""
    n = int(n or 0)
    if abs(n) < 1_000_000:
        return str(n)
    for div, suffix in ((1e6, "M"), (1e9, "G")):
        if abs(n) < div * 1000:
            return f"{n / div:.1f}{suffix}"
    return f"{n / 1e12:.1f}T"


def _table(*cols: tuple[str, str]) -> Table:
    """Numbers keep their header's width and never wrap; a left-aligned (name) column
    takes what is left and folds a name too long for it."""
    t = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False,
              header_style="none", expand=False)
    for name, justify in cols:
        if justify == "left":
            t.add_column(name, justify="left", overflow="fold", max_width=28)
        else:
            t.add_column(name, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                         min_width=len(name))
    return t


def seconds(us: Any) -> str:
    """Microseconds as seconds: 2 decimals, none from 10000 s."""
    v = float(us or 0) / 1e6
    return f"{v:.2f}" if v < 1e4 else f"{v:.0f}"


def time_unit(report: dict[str, Any]) -> str:
    """What the lock table's times are in: ``simulated`` (virtual time, the machine's own
    clock) or ``host`` (wall time, where the server timed them by the host's clock)."""
    models = {(c.get("clock") or {}).get("model") for c in report.get("cpus") or []}
    return "host" if "wall" in models else "simulated"


def verdict(report: dict[str, Any]) -> str:
    """``ok``, ``FAILED``, or ``stopped by SIGINT`` (or SIGTERM) when the run was
    interrupted and nothing else went wrong."""
    if report.get("ok"):
        return "ok"
    reason = str(report.get("reason") or "")
    interrupted = report.get("interrupted", reason.startswith("stopped by SIG"))
    if interrupted and not report.get("panic") and not report.get("invariants") \
            and not report.get("problems"):
        return reason if reason.startswith("stopped by SIG") else "stopped"
    return "FAILED"


def panic_message(panic: dict[str, Any]) -> str:
    """The panic's message without a leading ``panic: `` (a CPU's panic carries one)."""
    msg = str(panic.get("message") or "")
    return msg[len("panic: "):] if msg.startswith("panic: ") else msg


def cpu_table(report: dict[str, Any]) -> Table:
    t = _table(("cpu", "right"), ("pid", "right"), *((m, "right") for m in CPU_MODES),
               ("ctxsw", "right"), ("locks", "right"), ("contested", "right"),
               ("mem ops", "right"), ("lost", "right"))
    for c in report.get("cpus") or []:
        ticks = c.get("ticks") or {}
        total = sum(int(v) for v in ticks.values()) or 1
        lost = (c.get("clock") or {}).get("ticks_lost")
        t.add_row(str(c.get("id")), str(c.get("pid") or "-"),
                  *(f"{100.0 * int(ticks.get(m, 0)) / total:.1f}" for m in CPU_MODES),
                  count(c.get("ctxsw")), count(c.get("lock_acquires")),
                  count(c.get("lock_contested")), count(c.get("mem_ops")),
                  "-" if lost is None else count(lost))
    return t


def kernel_table(report: dict[str, Any]) -> Table:
    k = report.get("kernel") or {}

    def n(key: str) -> str:
        return count(k.get(key, 0))

    checks = int(k.get("invariant_checks", 0))
    bad = len(report.get("invariants") or [])
    t = Table.grid(padding=(0, 2))
    t.add_column(no_wrap=True)
    t.add_column()
    t.add_row("kernel", f"{n('forks')} forks ({n('forks_rfmem')} with RFMEM), "
              f"{n('exits')} exits, {n('waits')} waits, {n('phold_calls')} PHOLDs, "
              f"{n('vm_waits')} vm_waits")
    t.add_row("swap", f"{n('swapouts')} processes out, {n('swapins')} in; "
              f"{n('pages_swapped_out')} pages out, {n('pages_swapped_in')} in "
              f"({n('pageins')} page fault{'s' if k.get('pageins', 0) != 1 else ''})")
    t.add_row("checks", f"{count(checks)} invariant check{'s' if checks != 1 else ''}, "
              f"{bad} violation{'s' if bad != 1 else ''}")
    return t


def lock_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The locks, the one that cost the most first: by wait, then contested, then
    acquisitions."""
    return sorted((r for r in report.get("locks") or [] if r.get("acquires")),
                  key=lambda r: (-float(r.get("wait_us_total") or 0),
                                 -int(r.get("contested") or 0), -int(r.get("acquires") or 0),
                                 str(r.get("name"))))


def lock_table(rows: list[dict[str, Any]]) -> Table:
    t = _table(("lock", "left"), ("acquires", "right"), ("contested", "right"),
               ("cpus", "right"), ("max hold ms", "right"), ("wait s", "right"))
    for r in rows:
        t.add_row(str(r.get("name")), count(r.get("acquires")),
                  count(r.get("contested")), str(len(r.get("cpus_seen") or [])),
                  f"{float(r.get('max_hold_us') or 0) / 1e3:.1f}",
                  seconds(r.get("wait_us_total")))
    return t


def detector_findings(report: dict[str, Any]) -> list[Failure]:
    """What the detectors found (not the panic, invariants or the machine's problems),
    known findings marked."""
    if not report.get("findings"):
        return []
    return [f for f in classify(report)
            if not f.panic and f.detector not in ("invariant", "machine")]


def trouble_lines(report: dict[str, Any]) -> list[str]:
    """The panic, new findings one line each, known findings one line in all, failed
    invariants, problems of the machine."""
    lines: list[str] = []
    p = report.get("panic")
    if p:
        lines.append(f"panic: {panic_message(p)}")
        where = f"; {p.get('thread') or '?'} (tid {p.get('tid')})" if p.get("tid") else ""
        site = f" at {p['site']}" if p.get("site") else ""
        site = annotate(site, (report.get("policy") or {}).get("sources"))
        op = f", operation {p['op']}" if p.get("op") else ""
        lines.append(f"cpuid = {p.get('cpu')}{where}{site}{op}; the dump is in crash.txt")
    if report.get("findings"):
        fails = detector_findings(report)
        new = [f for f in fails if f.known is None]
        for f in new[:NEW_FINDINGS_SHOWN]:
            lines.append(f"new [{f.detector}] {f.summary}"
                         + (f" (found at operation {f.op})" if f.op else ""))
        if len(new) > NEW_FINDINGS_SHOWN:
            lines.append(f"new: {len(new) - NEW_FINDINGS_SHOWN} more in report.json")
        known: dict[str, int] = {}
        for f in fails:
            if f.known:
                known[f.known] = known.get(f.known, 0) + 1
        if known:
            lines.append("known: " + ", ".join(f"{k} x{v}" for k, v in sorted(known.items()))
                         + " (bugs of the 2002 code: FINDINGS.md)")
    lines += [f"invariant: {line}" for line in grouped(report.get("invariants") or [])]
    for line in report.get("problems") or []:
        lines.append(f"problem: {line}")
    return lines


def console_lines(report: dict[str, Any]) -> list[str]:
    """What the kernel printed on its console (dmesg), each line with its CPU; the first
    CONSOLE_SHOWN, the rest counted."""
    said = [f"console: cpu {c.get('id')}: {line}" for c in report.get("cpus") or []
            for line in c.get("console") or []]
    if len(said) > CONSOLE_SHOWN:
        said[CONSOLE_SHOWN:] = [f"console: {len(said) - CONSOLE_SHOWN} more lines in "
                                f"report.json (cpus[].console)"]
    return said


def summary_table(report: dict[str, Any], width: int = WIDTH) -> str:
    """The summary of a finished run, ``width`` columns wide."""
    parts: list[Any] = [cpu_table(report),
                        Text("(user..idle: % of the CPU's clock ticks; lost: clock ticks "
                             "it missed)"), "", kernel_table(report), ""]
    rows = lock_rows(report)
    if rows:
        parts.append(lock_table(rows[:TOP_LOCKS]))
        more = f"; +{len(rows) - TOP_LOCKS} in report.json" \
            if len(rows) > TOP_LOCKS else ""
        parts += [Text(f"(wait: {time_unit(report)} s summed over waiting threads, costliest "
                       f"first{more})"),
                  ""]
    parts += [Text(line, overflow="fold") for line in console_lines(report)
              + list((report.get("coverage") or {}).get("summary") or [])
              + trouble_lines(report)]
    reason = str(report.get("reason"))
    if report.get("panic") and reason.startswith("panic on cpu"):
        reason = reason.split(":", 1)[0]            # the message is just above
    v = verdict(report)
    why = "partial" if v == reason else reason
    new = len([f for f in detector_findings(report) if f.known is None])
    # the machine ran to its end and its kernel held: "ok", with what the detectors saw
    said = (f"; {new} new finding{'s' if new != 1 else ''} above, which a stress campaign "
            f"counts as failures" if v == "ok" and new else "")
    parts.append(Text(f"{v}: {float(report.get('duration_sim_s') or 0):.1f} "
                      f"simulated s in {float(report.get('wall_s') or 0):.1f} wall s, seed "
                      f"{report.get('seed')} ({why}){said}", overflow="fold"))
    return render(parts, width)


__all__ = ["summary_table", "verdict", "panic_message", "render", "count", "lock_rows"]
