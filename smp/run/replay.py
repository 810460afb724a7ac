"""``smp replay``: run a recorded machine again, exactly (DESIGN.md decision 11).

A recorded run (``RUN_DIR/schedule.smpr``, ``hw/record.py``) is replayed with the same real
processes: the server lets each request through in the recorded order
(``smp/machine/schedule.py``) and each CPU takes its events where the record says
(``hw/bus.py``). The replay then does what the recorded run did: the same replies, the
same counters, the same findings, the same panic at the same operation. :func:`compare`
says whether it did, naming what differs.

What stops a replay before it starts (exit status 2): a folder that is no run directory, no
record, a file that is not one, a record of another format or protocol, or a record made
with another config than the run directory's (``config.toml`` edited, or another run's
record). What it reports as a *divergence* (exit status 1): the first operation at which
the machine did something else than the record says (code changed, a record cut short or
damaged).

``--until N`` stops the machine after operation N and writes ``dump.txt``: every thread's
stack, the locks each holds and waits for, and the last operations each CPU made, the
moment before N+1.

``smp trace`` (:func:`trace`) replays the record with a tracer attached to the server
(``smp/machine/trace.py``): the timeline of the recorded run itself, drawn as the replay
applies each operation, into ``RUN_DIR/trace.json`` for ui.perfetto.dev. The replay's own
run directory is a temporary one: what the command leaves is the trace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Callable, Sequence

from smp.hw import record
from smp.hw.protocol import VERSION
from smp.machine.sites import annotate_all
from smp.machine.watch import WATCH_FILE, parse, watch_lines
from smp.observe.coverage import unpacked
from smp.observe.crash import backtrace, how_they_got_here, woken_line
from smp.observe.summary import verdict
from smp.run.config import Config, ConfigError, load_config
from smp.run.launcher import run_machine
from smp.run.sources import kernel_sources, source_changes

TRACE_FILE = "trace.json"

# What a replay must reproduce, by report section: the kernel's counters, the lock table's
# counts, the findings and the panic. Host figures (times, pids, bus waits) are not.
_LOCK_FIELDS = ("name", "acquires", "contested")


class ReplayError(Exception):
    """A replay that cannot start: the message says why (exit status 2)."""


class WatchError(ReplayError):
    """A --watch that names no object, field or lock (exit status 2)."""


@dataclasses.dataclass
class Prepared:
    record: record.Record
    config: Config
    source: str


def prepare(run_dir: str) -> Prepared:
    """Read a run directory's record and config and check that they belong together."""
    path = os.path.join(run_dir, record.RECORD_FILE)
    if not os.path.isdir(run_dir):
        raise ReplayError(f"{run_dir}: " + ("is not a directory (a run directory is)"
                                            if os.path.exists(run_dir)
                                            else "no such run directory"))
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(run_dir))
        if os.path.exists(os.path.join(parent, record.RECORD_FILE)) and os.path.exists(
                os.path.join(run_dir, "report.json")):
            raise ReplayError(f"{run_dir}: is a replay's run directory, which records "
                              f"nothing; replay the recorded run: smp replay {parent}")
        if not any(os.path.exists(os.path.join(run_dir, name))
                   for name in ("report.json", "config.toml")):
            raise ReplayError(f"{run_dir}: not a run directory (no {record.RECORD_FILE}, "
                              f"report.json or config.toml in it)")
        raise ReplayError(f"{path}: no record (the run was made with run.record = false, "
                          f"in wall time, or by a version of smp that did not record)")
    try:
        rec = record.read(path)
    except record.LogError as e:
        raise ReplayError(str(e)) from None
    hdr = rec.header
    if hdr.get("protocol") != VERSION.decode():
        raise ReplayError(f"{path}: recorded with protocol {hdr.get('protocol')!r}; this "
                          f"smp speaks {VERSION.decode()!r}")
    cpath = os.path.join(run_dir, "config.toml")
    try:
        cfg = load_config(cpath)
    except ConfigError as e:
        raise ReplayError(f"{e}") from None
    flat = {k: cfg[k] for k in cfg}
    if record.config_hash(flat) != hdr.get("config_hash"):
        diff = _config_diff(hdr.get("config") or {}, flat)
        raise ReplayError(f"{path}: the record was made with another config than {cpath}"
                          + (f" ({diff})" if diff else ""))
    if cfg["machine.time"] != "virtual":
        raise ReplayError(f"{cpath}: a wall-time run cannot be replayed")
    return Prepared(rec, cfg.with_values({"run.record": False}), cpath)


def _config_diff(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(k for k in set(recorded) | set(now)
                  if k not in record.NEUTRAL_KEYS
                  and json.dumps(recorded.get(k), default=str) != json.dumps(now.get(k),
                                                                             default=str))
    return ", ".join(f"{k}: recorded {recorded.get(k)!r}, now {now.get(k)!r}"
                     for k in keys[:3])


def _say_source_changes(rec: record.Record, log: Callable[[str], None] | None) -> None:
    changed = source_changes(rec.header.get("sources"), kernel_sources())
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more"
                                           if len(changed) > 4 else "")
        (log or (lambda line: print(line, file=sys.stderr, flush=True)))(
            f"the kernel changed since the recording ({shown}): the replay will diverge "
            f"where the change matters")


def replay(run_dir: str, out_dir: str | None, until: int = 0,
           log: Callable[[str], None] | None = None,
           force: bool = False, watch: Sequence[str] = (),
           coverage: bool = False) -> tuple[int, dict[str, Any], str]:
    """Replay ``run_dir``'s record into ``out_dir`` (``force``: clear it if it holds an
    earlier run, as ``smp run --force``; ``watch``: what to watch, into OUT/watch.txt;
    ``coverage``: count the kernel's lines run, whether the run did or not); returns
    (exit status, report, out)."""
    _check_watch(watch)
    prep = _prepare_until(run_dir, until)
    if coverage:
        prep.config = prep.config.with_values({"debug.coverage": True}, origin="--coverage")
    if out_dir is not None and os.path.realpath(out_dir) == os.path.realpath(run_dir):
        raise ReplayError(f"--run-dir {out_dir}: is the run being replayed; give another "
                          f"directory (the default is {os.path.join(run_dir, 'replay')})")
    out = out_dir or _fresh(os.path.join(run_dir, "replay"))
    _say_source_changes(prep.record, log)
    result = run_machine(prep.config, out, log=log, replay=prep.record, until=until,
                         force=force, watch=watch)
    rep = result.report
    if rep.get("interrupted"):          # stopped by a signal: nothing to compare
        return result.exit_status, rep, out
    sched = rep.get("schedule", {}).get("replay") or {}
    div = sched.get("divergence")
    if until:
        write_dump(out, rep, until)
    if div is not None:
        return 1, rep, out
    status = result.exit_status
    if not until:
        orig = _load_report(run_dir)
        if orig is not None:
            diffs = compare(orig, rep)
            rep["replay_differences"] = diffs
            if (orig.get("coverage") or {}).get("counts") and \
                    (rep.get("coverage") or {}).get("counts"):
                rep.setdefault("schedule", {}).setdefault("replay", {})["lines_compared"] = True
            if diffs:
                return 1, rep, out
            # the replay reproduced the recorded run: its verdict is the recorded one. A run
            # stopped by a signal (exit 130/143) replays to where it stopped: the stop was
            # not the machine's, so only what went wrong before it fails the replay
            status = 1 if verdict(orig) == "FAILED" else 0
            if orig.get("interrupted"):
                rep.setdefault("schedule", {}).setdefault("replay", {})["recorded_stop"] = \
                    orig.get("reason")
    return status, rep, out


def trace(run_dir: str, out_path: str | None = None, until: int = 0,
          log: Callable[[str], None] | None = None,
          watch: Sequence[str] = ()) -> tuple[int, dict[str, Any], str]:
    """Replay ``run_dir``'s record with the server's tracer on, into ``out_path`` (default
    ``RUN_DIR/trace.json``); returns (exit status, the replay's report, the trace's path).
    Status 0: the timeline of the whole record (or up to ``until``); 1: the replay
    diverged, and the timeline ends there, marked. ``watch``: what to watch, each access
    marked on the timeline (the report's ``watch_lines`` has what ``smp replay --watch``
    would print)."""
    _check_watch(watch)
    prep = _prepare_until(run_dir, until)
    path = os.path.abspath(out_path or os.path.join(run_dir, TRACE_FILE))
    kept = [os.path.realpath(os.path.join(run_dir, name))
            for name in (record.RECORD_FILE, "config.toml", "report.json")]
    if os.path.realpath(path) in kept:
        raise ReplayError(f"-o {out_path}: is a file of the run being traced; give "
                          f"another (the default is {os.path.join(run_dir, TRACE_FILE)})")
    try:
        with open(path, "w"):                # the server writes it: can it?
            pass
    except OSError as e:
        raise ReplayError(f"{path}: cannot write the trace: {e.strerror}") from None
    _say_source_changes(prep.record, log)
    with tempfile.TemporaryDirectory(prefix="smp-trace-") as tmp:
        result = run_machine(prep.config, os.path.join(tmp, "replay"), log=log,
                             replay=prep.record, until=until, trace=path, watch=watch)
        wpath = os.path.join(tmp, "replay", WATCH_FILE)
        rep = result.report
        if watch and os.path.exists(wpath):     # (the folder goes: keep what it said)
            rep["watch_lines"] = watch_lines(wpath)
    sched = rep.get("schedule") or {}
    failed = [p for p in rep.get("problems") or [] if p.startswith(f"cannot write {path}")]
    if failed or sched.get("trace_error"):          # a full disk, at its start or midway
        raise ReplayError(failed[0] if failed else sched["trace_error"])
    if not _whole_trace(path):                      # ... or as the server closed it
        raise ReplayError(f"cannot write {path}: its end is missing (the disk filled as "
                          f"it was closed, or the server died)")
    if rep.get("interrupted"):          # stopped by a signal: the timeline up to the stop
        return result.exit_status, rep, path
    return (1 if (sched.get("replay") or {}).get("divergence") else 0), rep, path


def _check_watch(watch: Sequence[str]) -> None:
    """A malformed --watch is refused before anything starts (WatchError: status 2)."""
    for w in watch:
        try:
            parse(w)
        except ValueError as e:
            raise WatchError(str(e)) from None


def _whole_trace(path: str) -> bool:
    """Whether the trace file ends as the tracer closes it."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - 3, 0))
            return f.read() == b"]}\n"
    except OSError:
        return False


def _prepare_until(run_dir: str, until: int) -> Prepared:
    prep = prepare(run_dir)
    if until and not 0 < until <= prep.record.requests:
        raise ReplayError(f"--until {until}: the record has operations 1 to "
                          f"{prep.record.requests}")
    return prep


def _fresh(path: str) -> str:
    n, p = 1, path
    while os.path.exists(p):
        n += 1
        p = f"{path}-{n}"
    return p


def _load_report(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, "report.json")) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def fingerprint(report: dict[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce of a run's report."""
    panic = report.get("panic") or {}
    sched = (report.get("schedule") or {})
    ops = (sched.get("record") or {}).get("operations")
    if ops is None:
        ops = (sched.get("replay") or {}).get("operations")
    return {
        "kernel": report.get("kernel", {}),
        "locks": sorted([{k: r.get(k) for k in _LOCK_FIELDS}
                         for r in report.get("locks", [])], key=lambda r: str(r["name"])),
        "findings": sorted(f"{f.get('detector')}|{f.get('summary')}"
                           for f in report.get("findings", [])),
        "panic": ({k: panic.get(k) for k in ("message", "cpu", "tid", "site", "op")}
                  if panic else None),
        "invariants": report.get("invariants", []),
        "operations": ops,
        # each CPU's clock where it stopped, its ticks by what it was doing and the read
        # points it passed: the same, or a CPU's time went otherwise though every
        # operation and counter came out the same (a replayed event that moved a clock)
        "clocks": {f"cpu {c.get('id')}": {"sim_s": (c.get("clock") or {}).get("sim_time"),
                                          "ticks": c.get("ticks"),
                                          "read_points": (c.get("bus") or {}).get(
                                              "read_points")}
                   for c in report.get("cpus", [])},
        # with debug.coverage: how often each line of the kernel ran
        "coverage": (report.get("coverage") or {}).get("counts"),
    }


def compare(orig: dict[str, Any], rep: dict[str, Any]) -> list[str]:
    """What differs between a recorded run's report and its replay's (empty: nothing)."""
    a, b = fingerprint(orig), fingerprint(rep)
    if a["panic"] and b["panic"] and None in (a["panic"]["op"], b["panic"]["op"]):
        a["panic"].pop("op")                  # a report from before panics named their
        b["panic"].pop("op")                  # operation: compare the rest
    if a["coverage"] is None or b["coverage"] is None:    # one run did not count lines
        a.pop("coverage")
        b.pop("coverage")
    out = []
    for key in a:
        if a[key] == b[key]:
            continue
        if key == "coverage":
            out.append(f"coverage: {_line_counts_diff(a[key], b[key])}")
            continue
        if isinstance(a[key], dict) and isinstance(b[key], dict):
            ks = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
            out.append(f"{key}: " + ", ".join(f"{k} {a[key].get(k)!r} -> {b[key].get(k)!r}"
                                              for k in ks[:5]))
        else:
            out.append(f"{key}: {str(a[key])[:120]} -> {str(b[key])[:120]}")
    return out


def _line_counts_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The first lines of the kernel whose counts differ: ``vm/vm_glue.py:431 12 -> 13``."""
    ca, cb = unpacked(a), unpacked(b)
    diffs = [f"{f}:{n} {ca.get(f, {}).get(n, 0)} -> {cb.get(f, {}).get(n, 0)}"
             for f in sorted(set(ca) | set(cb))
             for n in sorted(set(ca.get(f, {})) | set(cb.get(f, {})))
             if ca.get(f, {}).get(n, 0) != cb.get(f, {}).get(n, 0)]
    return ", ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more lines)" if len(diffs) > 5 else "")


def panicked_by(report: dict[str, Any], until: int) -> int | None:
    """The operation the replayed machine panicked at, if at or before ``until`` (the
    other CPUs' operations as it halts come after it: an --until among them is reached by
    a machine that had stopped running), else None."""
    op = (report.get("panic") or {}).get("op")
    return op if isinstance(op, int) and op <= until else None


def until_outcome(report: dict[str, Any], until: int) -> str:
    """What became of a replay run ``--until``, as smp replay and dump.txt say it."""
    p = panicked_by(report, until)
    if p is None:
        return f"stopped after operation {until}"
    if p == until:
        return f"stopped after operation {until}, at which the machine panicked"
    return f"panicked at operation {p}, before reaching operation {until}"


def write_dump(out: str, report: dict[str, Any], until: int) -> str:
    """``dump.txt``: the machine the moment after operation ``until`` (or as it halted
    after a panic at or before it)."""
    head = f"smp replay: {until_outcome(report, until)}"
    if panicked_by(report, until) is not None:
        head += " (its panic: crash.txt); below, the machine as it halted"
    lines = [head, ""]
    sched = (report.get("schedule") or {}).get("replay") or {}
    if sched.get("divergence"):
        lines += [f"divergence: {sched['divergence']['message']}", ""]
    lines.append("threads (the locks each holds and waits for; its kernel stack, innermost "
                 "first):")
    for t in report.get("threads", []):
        lines.append(f"  cpu {t.get('cpu')} thread {t.get('tid')} {t.get('name')!r}")
        for h in t.get("held", []):
            lines.append(f"      holds {h['lock']} ({h['mode']}) taken @ {h['site']}"
                         + (f" (operation {h['op']})" if h.get("op") else ""))
        w = t.get("waiting")
        if w:
            lines.append(f"      waits for {w['lock']} ({w['mode']}) asked @ {w['site']}")
        for fr in backtrace(t.get("stack") or []):          # ddb's trace, innermost first
            lines.append(f"      {fr}")
        w = woken_line(((report.get("liveness") or {}).get("woken") or {}).get(
            str(t.get("tid"))) or {})
        if w:
            lines.append(f"      {w}")
    lines += how_they_got_here(report, "; an earlier --until shows what came before")
    lines = annotate_all(lines, (report.get("policy") or {}).get("sources"))
    path = os.path.join(out, "dump.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
