"""Record and replay (DESIGN.md decision 11): every run is recorded, and ``smp replay`` runs
it again with real processes, exactly: the same counters, findings and panic at the same
operation; a record that is not one, is of another config, is cut short or damaged, is
refused or reported as a divergence; ``--until`` stops the machine and dumps it; ``smp
trace`` draws the recorded run as a timeline Perfetto opens.

The recorded runs are small machines (2 CPUs, a few simulated seconds); each test's
machines are real server and CPU processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import zlib
from typing import Any

import pytest

from helpers import REPO, cli, cli_cmd, session, wait_for

pytestmark = pytest.mark.long

SMALL = ["--set", "machine.cpus=2", "--set", "run.duration=1.5", "--set", "user.hog_pages=60"]


def _run(tmp: pathlib.Path, *extra: str, name: str = "rec") -> tuple[int, pathlib.Path]:
    rdir = tmp / name
    proc = cli(tmp, "run", *SMALL, *extra, "--run-dir", str(rdir), "--quiet", timeout=120)
    assert (rdir / "report.json").exists(), proc.stderr
    return proc.returncode, rdir


def _replay(rdir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(rdir.parent, "replay", str(rdir), *extra, timeout=180)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("replay")
    status, rdir = _run(tmp)
    assert status == 0
    return rdir


@pytest.mark.timeout(300)
def test_a_clean_run_replays_identically(recorded: pathlib.Path) -> None:
    rec = json.loads((recorded / "report.json").read_text())
    ops = rec["schedule"]["record"]["operations"]
    assert ops > 1000 and (recorded / "schedule.smpr").stat().st_size > 0
    # counting the kernel's lines (which the run did not) changes nothing the machine does
    proc = _replay(recorded, "--coverage")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"replay identical: {ops} operations" in proc.stdout
    assert "coverage: vm_glue.c: " in proc.stdout
    assert "clocks, findings and panic as the recorded run" in proc.stdout   # (no lines)
    assert (recorded / "replay" / "vm_glue.c.gcov").is_file()
    again = json.loads((recorded / "replay" / "report.json").read_text())
    assert again["kernel"] == rec["kernel"]
    assert [(r["name"], r["acquires"], r["contested"]) for r in again["locks"]] == \
        [(r["name"], r["acquires"], r["contested"]) for r in rec["locks"]]
    # each CPU stopped at the same simulated time, read point and ticks
    assert [(c["clock"]["sim_time"], c["ticks"], c["bus"]["read_points"])
            for c in again["cpus"]] == \
        [(c["clock"]["sim_time"], c["ticks"], c["bus"]["read_points"]) for c in rec["cpus"]]
    # the replay's own folder records nothing: the message says which folder to replay
    proc = _replay(recorded / "replay")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"smp replay: {recorded / 'replay'}: is a replay's run directory, "
                           f"which records nothing; replay the recorded run: smp replay "
                           f"{recorded}\n"), proc.stderr


@pytest.mark.timeout(300)
def test_a_fail_point_panic_replays_at_the_same_operation(tmp_path: pathlib.Path) -> None:
    # stress.toml walks allproc for swapouts every simulated second: the first walk meets
    # a system process, which the switched-off guard no longer skips
    status, rdir = _run(tmp_path, str(REPO / "configs" / "stress.toml"), "--set",
                        "run.duration=4", "--fail-point", "swapout_procs_p_system")
    rec = json.loads((rdir / "report.json").read_text())
    assert status == 1 and rec["panic"], rec["reason"]
    crash = (rdir / "crash.txt").read_text()      # how the CPUs got there, for people
    assert "\ndb> ps\n" in crash and "the last operations of each CPU" in crash, crash
    assert f"      {rec['panic']['op']}  REPORT" in crash, crash      # the panic's own
    # the vm daemon holds Giant as its tsleep took it back: the hold is msleep's, and
    # names the sleep's caller (every sleeper's Giant read "locked @ kern/kern_synch.py:56")
    giant = [line for line in crash.split("db> show alllocks\n", 1)[1].split("\n\n", 1)[0]
             .splitlines() if " Giant " in line]
    assert giant and re.search(r"locked @ kern/kern_synch\.py:\d+ \(msleep, called from "
                               r"vm/vm_pageout\.py:\d+\) \(operation \d+\)$", giant[0]), giant
    # its summary ends with the command that replays it
    shown = cli(tmp_path, "report", str(rdir), timeout=60)
    assert shown.stdout.endswith(f"\nreplay: smp replay {rdir}\n"), shown.stdout
    proc = _replay(rdir)
    assert "replay identical" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1                      # the recorded run's own verdict
    again = json.loads((rdir / "replay" / "report.json").read_text())
    assert again["panic"]["message"] == rec["panic"]["message"]
    assert again["panic"]["site"] == rec["panic"]["site"]
    # the same operation: the panicking CPU's REPORT, numbered in the machine's order
    assert 0 < rec["panic"]["op"] <= rec["schedule"]["record"]["operations"]
    assert again["panic"]["op"] == rec["panic"]["op"]
    assert again["schedule"]["replay"]["operations"] == rec["schedule"]["record"]["operations"]
    # --until past the panic (the other CPUs' last operations as the machine halts): the
    # replay says where the machine panicked, not that it ran to the --until
    last, op = rec["schedule"]["record"]["operations"], rec["panic"]["op"]
    assert last > op
    proc = _replay(rdir, "--until", str(last), "--run-dir", str(tmp_path / "past"))
    said = f"replay panicked at operation {op}, before reaching operation {last}"
    assert said in proc.stdout and "stopped after" not in proc.stdout, proc.stdout
    assert (tmp_path / "past" / "dump.txt").read_text().startswith(
        f"smp replay: panicked at operation {op}, before reaching operation {last}"), \
        proc.stdout
    # --until at the panic's own operation: reached, and the panic said (it said only
    # "stopped after", as if the machine had been running)
    proc = _replay(rdir, "--until", str(op), "--run-dir", str(tmp_path / "at"))
    said = f"replay stopped after operation {op}, at which the machine panicked: "
    assert said in proc.stdout and "crash.txt" in proc.stdout, proc.stdout
    assert (tmp_path / "at" / "dump.txt").read_text().startswith(f"smp replay: {said[7:-2]} "
                                                                  "(its panic: crash.txt)")


@pytest.mark.timeout(300)
def test_until_stops_the_machine_and_dumps_every_thread(recorded: pathlib.Path,
                                                       tmp_path: pathlib.Path) -> None:
    out = tmp_path / "stop"
    proc = _replay(recorded, "--until", "500", "--run-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dump = (out / "dump.txt").read_text()
    assert dump.startswith("smp replay: stopped after operation 500")
    assert "cpu 0 thread" in dump and "cpu 1 thread" in dump
    assert "the last operations of each CPU" in dump
    last = [int(line.split()[0]) for line in dump.splitlines()
            if line.startswith("      ") and line.split()[0].isdigit()]
    assert last and max(last) == 500                  # nothing after operation 500
    assert "  cpu 0 (its last 32):" in dump           # all the server keeps of a CPU
    # what each load was answered with, and every process as ddb's ps shows it
    assert any(" LOAD" in line and " -> " in line for line in dump.splitlines()), dump
    ps = dump.split("db> ps\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert ps[0].split() == ["pid", "ppid", "proc", "cpu", "state", "td_wmesg", "p_flag",
                             "p_sflag", "p_lock", "td_state", "td_inhibitors", "comm"], ps
    assert len(ps) > 3 and any(" TDS_" in row for row in ps[1:]), ps   # states named
    # a thread stopped in a memory access shows the function making it, as ddb does:
    # the door's and a struct field's frames are one instruction, not frames of a trace
    frames = [line.strip() for line in dump.splitlines() if line.strip().endswith(
        tuple("0123456789")) and "() at " in line]
    assert frames and not [f for f in frames if f.startswith(("_call()", "__getattr__()",
                                                              "__setattr__()", "load()"))], \
        frames


# a line of watch.txt: operation, cpu, thread, what it did to what, site
_WATCHED = re.compile(r"op +(\d+)  cpu (\d+)  thread (\d+)(?: \([^)]*\))? +"
                      r"(alloc|store \(racy\)|store|load \(racy\)|load|atomic add|add|cas|"
                      r"setbits|clrbits|acquire|release|granted|free|[a-z]+(?: [a-z]+)*) +"
                      r"(.*?) @ (\S+\.py:\d+)(?: \(.*\))?")


@pytest.mark.timeout(300)
def test_watch_names_every_access_of_an_object_in_order_and_the_replay_still_matches(
        recorded: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """--watch: a proc of the recorded run's report (named as the report named it: the
    replay allocates in the recorded order), one of its fields, Giant by name; every
    access in operation order, each store's old value the value before it; a WHAT that
    matches nothing says why; the replay is still the recorded run."""
    rec = json.loads((recorded / "report.json").read_text())
    proc0 = rec["procs"][0]
    obj, h = proc0["addr"], int(proc0["addr"].split("#")[1])
    out = tmp_path / "watched"
    proc = _replay(recorded, "--run-dir", str(out), "--watch", obj, "--watch",
                   f"&{obj}.p_pid", "--watch", "lock:Giant", "--watch", "proc#99999",
                   "--watch", f"thread#{h}", "--watch", f"{obj}.p_nosuch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replay identical" in proc.stdout
    text = (out / "watch.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("op ")]
    parsed = [_WATCHED.fullmatch(ln) for ln in lines]
    assert lines and all(parsed), [ln for ln, m in zip(lines, parsed) if not m][:5]
    ops = [int(m.group(1)) for m in parsed if m]
    assert ops == sorted(ops) and ops[-1] <= rec["schedule"]["record"]["operations"]
    # the proc's life: allocated, then its pid stored as the report says; every store's
    # old value is the value the last store, or the allocation, left
    mine = [m for m in parsed if m and m.group(5).split()[0].startswith((obj, f"&{obj}"))]
    assert mine[0].group(4) == "alloc" and mine[0].group(5) == obj, mine[0].group(0)
    pids = [m.group(5) for m in mine if m.group(4).startswith("store")
            and m.group(5).startswith(f"{obj}.p_pid ")]
    assert pids and pids[-1].endswith(f" -> {proc0['pid']}"), (pids, proc0)
    now: dict[str, str] = {}
    stores = 0
    for m in mine:
        what, _, rest = m.group(5).partition(" ")
        if m.group(4) == "alloc" or m.group(4).startswith("load"):
            if rest.startswith("= "):
                if m.group(4).startswith("load") and what in now:
                    assert now[what] == rest[2:], m.group(0)
                now[what] = rest[2:]
        elif m.group(4) in ("store", "store (racy)", "atomic add", "add", "setbits",
                            "clrbits") or (m.group(4) == "cas" and " -> " in rest):
            old, new = rest.split(" -> ")
            assert now.get(what, old) == old, (m.group(0), now.get(what))
            now[what] = new
            stores += 1
    assert stores > 5
    giant = [m for m in parsed if m and '"Giant"' in m.group(5)]
    assert {m.group(4) for m in giant} >= {"acquire", "release"}
    assert any("granted" in m.group(5) for m in giant)
    # the console: the count, the first and last accesses, and the verdicts
    assert f"watch: {len(lines)} accesses ({out / 'watch.txt'})" in proc.stdout
    n = rec["schedule"]["record"]["operations"]
    assert f"proc#99999: NOTHING MATCHED: no object #99999 was allocated in the {n} " \
        f"operations replayed" in proc.stdout
    assert f"thread#{h}: NOTHING MATCHED: object #{h} is a proc ({obj}), not a thread" \
        in proc.stdout
    assert f"{obj}.p_nosuch: NOTHING MATCHED: a proc has no field 'p_nosuch'" in proc.stdout
    assert re.search(rf"^  {re.escape(obj)}: \d+ accesses$", proc.stdout, re.M)
    assert "# proc#99999: NOTHING MATCHED" in text        # the file says it too


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir()
    for name in ("config.toml", "schedule.smpr", "report.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.timeout(120)
def test_what_is_not_a_record_or_is_another_configs_is_refused_before_anything_starts(
        recorded: pathlib.Path, tmp_path: pathlib.Path) -> None:
    junk = _copy(recorded, tmp_path / "junk")
    (junk / "schedule.smpr").write_bytes(b"not a record at all\n")
    proc = _replay(junk)
    assert proc.returncode == 2 and "not a recorded run" in proc.stderr, proc.stderr
    other = _copy(recorded, tmp_path / "other")
    cfg = (other / "config.toml").read_text().replace("seed = 1\n", "seed = 2\n")
    (other / "config.toml").write_text(cfg)
    proc = _replay(other)
    assert proc.returncode == 2 and "another config" in proc.stderr, proc.stderr
    assert "run.seed" in proc.stderr
    assert not (other / "replay").exists()            # nothing was started
    proc = _replay(tmp_path / "nowhere")
    assert proc.returncode == 2 and "no such run directory" in proc.stderr
    (tmp_path / "afile").write_text("")
    proc = _replay(tmp_path / "afile")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
def test_a_replay_is_refused_an_output_it_cannot_use(recorded: pathlib.Path,
                                                     tmp_path: pathlib.Path) -> None:
    """One line and exit 2 before anything starts (it was a traceback), and never an
    output that would clear the run being replayed, even with --force."""
    (tmp_path / "afile").write_text("")
    full = _copy(recorded, tmp_path / "full")
    for extra, said in [(["--run-dir", str(tmp_path / "afile")], "is not a directory"),
                        (["--run-dir", str(full)], "is not empty"),
                        (["--run-dir", str(recorded), "--force"], "is the run being replayed"),
                        (["--until", "0"], "--until must be a positive operation number")]:
        proc = _replay(recorded, *extra)
        assert proc.returncode == 2 and said in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, \
            proc.stderr
    proc = cli(recorded.parent, "trace", str(recorded), "-o", str(recorded / "schedule.smpr"),
               timeout=60)
    assert proc.returncode == 2 and "is a file of the run being traced" in proc.stderr, \
        proc.stderr
    assert (recorded / "schedule.smpr").exists() and (full / "report.json").exists()
    assert (recorded / "schedule.smpr").stat().st_size > 0


@pytest.mark.timeout(300)
def test_a_truncated_or_damaged_record_diverges_at_an_operation(recorded: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    cut = _copy(recorded, tmp_path / "cut")
    data = (cut / "schedule.smpr").read_bytes()
    (cut / "schedule.smpr").write_bytes(data[:len(data) // 2])
    proc = _replay(cut)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "replay DIVERGED: replay diverged at operation" in proc.stdout
    assert "cut short" in proc.stdout or "no end" in proc.stdout
    bad = _copy(recorded, tmp_path / "bad")
    raw = bytearray(data)
    body = zlib.decompressobj().decompress(bytes(raw[8:]))   # still a record inside?
    assert body
    for i in range(len(raw) // 2, len(raw) // 2 + 64):        # damage the middle
        raw[i] ^= 0xFF
    (bad / "schedule.smpr").write_bytes(bytes(raw))
    proc = _replay(bad)
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert ("diverged at operation" in proc.stdout or "damaged" in proc.stdout
            or "not a recorded run" in proc.stderr), proc.stdout + proc.stderr


def _retold(src: pathlib.Path, dst: pathlib.Path, cpu: int) -> tuple[int, int]:
    """A copy of the recorded run whose read log says that ``cpu``, at its first read
    point that read any, read more machine messages than the server ever sends it (one
    more than it read in the whole run); that point, and how many more it claims there.
    (One more than it read there was not always enough: when the server sent that CPU
    its next event before its next request was due, the CPU took both at that point,
    went on as before, and the replay was identical.)"""
    import msgpack
    from smp.hw import record
    _copy(src, dst)
    data = (dst / "schedule.smpr").read_bytes()
    items = list(record._records(zlib.decompress(data[len(record.MAGIC):])))
    reads = [it for it in items if it[0] == "r" and it[1] == cpu and it[2]]
    extra = 1 + sum(sum(it[2][1::2]) for it in reads)  # [delta, count, ...]: the counts
    reads[0][2][1] += extra
    body = b"".join(msgpack.packb(it, use_bin_type=True) for it in items)
    (dst / "schedule.smpr").write_bytes(record.MAGIC + zlib.compress(body))
    return int(reads[0][2][0]), extra


@pytest.mark.timeout(300)
def test_a_cpu_that_waits_for_an_event_never_sent_diverges_naming_what_it_was_sent(
        recorded: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A record whose read log wants more events at a read point of cpu 1 than the server
    will ever have sent it by then: once cpu 1's request is the next, the replay diverges
    there (exit 1), naming the read point, the count and what cpu 1 was sent."""
    point, extra = _retold(recorded, tmp_path / "retold", cpu=1)
    proc = _replay(tmp_path / "retold")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = re.search(r"replay diverged at operation (\d+): the record has cpu 1's \w+ @ \S+ "
                  r"\(thread \d+\) next, but cpu 1 waits at its read point (\d+) for (\d+) "
                  r"more event\(s\) that would come only later; it has had every one of the "
                  r"(\d+) machine events sent to it, the last ([A-Z]+ at operation \d+"
                  r"(, [A-Z]+ at operation \d+)*)", proc.stdout)
    assert m is not None, proc.stdout
    assert int(m.group(2)) == point and 1 <= int(m.group(3)) <= extra, proc.stdout
    assert int(m.group(4)) >= 1, proc.stdout


@pytest.mark.timeout(300)
def test_trace_writes_a_timeline_perfetto_opens(recorded: pathlib.Path) -> None:
    # (with a watch: its accesses are marks on their CPUs' thread tracks)
    obj = json.loads((recorded / "report.json").read_text())["procs"][0]["addr"]
    proc = cli(recorded.parent, "trace", str(recorded), "--watch", f"{obj}.p_pid",
               timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = recorded / "trace.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    evs = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in evs
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs == {0: "cpu 0", 1: "cpu 1"}
    for e in evs:                                       # the Chrome trace event format
        assert e["ph"] in "MXbeisf" and isinstance(e.get("pid"), int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
    # threads by name, sleeps on channels as the kernel prints them
    ran = [e["name"] for e in evs if e["ph"] == "X" and e["tid"] == 1]
    assert any(re.fullmatch(r"init\d \(tid \d+\)", n) for n in ran), ran[:20]
    assert any(re.fullmatch(r".+ \(tid \d+\) asleep on &\w+#\d+\.\w+", e["name"])
               for e in evs if e["ph"] == "X" and e["tid"] == 3)
    assert any(e["ph"] == "b" and e["name"].startswith("hold ") for e in evs)
    marks = [e for e in evs if e["ph"] == "i" and e.get("s") == "t"]
    assert marks and all(e["name"].startswith(f"watch: ") and f"{obj}.p_pid" in e["name"]
                         and e["tid"] == 1 for e in marks), marks[:5]
    assert re.search(rf"^watch: {len(marks)} accesses$", proc.stdout, re.M)
    assert "ui.perfetto.dev" in proc.stdout
    assert "run ok" not in proc.stderr and "run FAILED" not in proc.stderr   # the replay's


@pytest.mark.timeout(240)
def test_an_interrupted_replay_is_cut_short_not_a_divergence(tmp_path: pathlib.Path) -> None:
    """Ctrl-C during a replay: exit 130 and "cut short", the replay not compared with the
    recorded run (it used to report the missing operations as differences, exit 1). The
    recorded run is long enough (8 simulated s) that its replay is still running when the
    signal comes, right after the replay's machine has started."""
    status, rdir = _run(tmp_path, "--set", "run.duration=8")
    assert status == 0
    with session(cli_cmd("replay", str(rdir)), tmp_path) as proc:
        wait_for(lambda: (rdir / "replay" / "live.json").exists(), 60, "the replay to run")
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "replay stopped by SIGINT: cut short, not compared" in out, out
    assert "DIFFERS" not in out and "DIVERGED" not in out, out


@pytest.mark.timeout(240)
def test_a_run_stopped_by_a_signal_replays_to_where_it_stopped(tmp_path: pathlib.Path) -> None:
    """A run stopped by SIGTERM (exit 143) is recorded up to its stop; its replay is
    identical, says the recorded run was stopped there, and exits 0: the stop was not a
    failure of the machine's (it exited 1, "ok" and "identical" above it)."""
    rdir = tmp_path / "stopped"
    with session(cli_cmd("run", *SMALL, "--set", "run.duration=30", "--run-dir", str(rdir),
                         "--quiet"), tmp_path) as proc:
        wait_for(lambda: (rdir / "live.json").exists(), 60, "the run to start")
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert json.loads((rdir / "report.json").read_text())["reason"] == "stopped by SIGTERM"
    again = _replay(rdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "replay identical: " in again.stdout, again.stdout
    assert ("(the recorded run was stopped by SIGTERM: the replay ends where it stopped)"
            in again.stdout), again.stdout


@pytest.mark.timeout(240)
def test_a_run_that_dies_leaves_a_record_that_replays_to_near_its_end(
        tmp_path: pathlib.Path) -> None:
    """A run killed outright (every process of it, as the host's OOM killer or a power cut
    would) leaves its record cut short. Every CPU sends its read log at least once a
    second and the server flushes the record as often, so the file knows every CPU's
    reads long before its first 64 KiB (until then it held everything back, and the
    record of a run killed in its first seconds replayed nothing: "the record ends for
    cpu 1, whose reads it has only up to read point 0", at operation 1). The replay stops
    where the record's order or a CPU's known reads end, whichever the kill cut shorter,
    and says how to look at the machine there."""
    from smp.hw import record

    def known(path: pathlib.Path) -> bool:
        # (one look at the file: "not there" then "there", made by the server between two
        # looks, once passed for "its first 64 KiB written", and the record was empty)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size >= record.FLUSH_BYTES:
            return True
        try:
            rec = record.read(str(path))
        except record.LogError:                 # not even its header yet
            return False
        return all(rec.covered.get(cpu, 0) >= 200 for cpu in (0, 1))   # booted, working

    rdir = tmp_path / "killed"
    path = rdir / "schedule.smpr"
    with session(cli_cmd("run", *SMALL, "--set", "run.duration=60", "--run-dir", str(rdir),
                         "--quiet"), tmp_path) as proc:
        wait_for(lambda: known(path), 120, "every CPU's reads in the record")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert path.stat().st_size < record.FLUSH_BYTES, "the reads came only with a full buffer"
    rec = record.read(str(path))
    assert rec.damage and rec.requests > 0
    again = _replay(rdir)
    assert again.returncode == 1, again.stdout + again.stderr
    m = re.search(r"replay diverged at operation (\d+): the record ends (for cpu \d, whose "
                  r"reads it has only up to read point \d+|after \d+ operations, but cpu \d "
                  r"went on with [^;\n]+); the record is cut short \(truncated\); --until "
                  r"(\d+) stops the machine before it and dumps it", again.stdout)
    assert m and int(m[1]) > 200 and int(m[3]) == int(m[1]) - 1, again.stdout


@pytest.mark.timeout(60)
def test_a_record_keeps_the_kernel_it_ran_and_a_replay_says_what_changed(
        recorded: pathlib.Path) -> None:
    """The header keeps every kernel file's digest; a replay of a kernel edited since
    says so before it starts, naming the files (it will diverge where that matters)."""
    from smp.hw import record
    from smp.run import replay, sources
    rec = record.read(str(recorded / "schedule.smpr"))
    now = sources.kernel_sources()
    assert rec.header["sources"] == now and "vm/vm_glue.py" in now
    assert sources.source_changes(rec.header["sources"], now) == []
    edited = dict(now, **{"vm/vm_glue.py": "0" * 12, "kern/new.py": "1" * 12})
    del edited["kern/kern_exit.py"]
    assert sources.source_changes(edited, now) == ["kern/kern_exit.py", "kern/new.py",
                                                  "vm/vm_glue.py"]
    said: list[str] = []
    rec.header["sources"] = edited
    replay._say_source_changes(rec, said.append)
    assert said == ["the kernel changed since the recording (kern/kern_exit.py, kern/new.py, "
                    "vm/vm_glue.py): the replay will diverge where the change matters"]
    assert sources.source_changes(None, now) == []          # a record that kept none


@pytest.mark.quick
def test_a_replay_whose_cpu_stopped_at_another_time_differs_naming_the_cpu() -> None:
    """Every operation and counter the same, but a CPU's clock went otherwise (as when a
    replayed event moved a clock the recorded one had not): the replay differs."""
    from smp.run.replay import compare

    def report(sim: float, idle: int, points: int) -> dict[str, Any]:
        cpu = {"id": 1, "clock": {"sim_time": sim}, "ticks": {"sys": 3, "idle": idle},
               "bus": {"read_points": points}}
        cpu0 = {"id": 0, "clock": {"sim_time": 4.0}, "ticks": {"sys": 9, "idle": 391},
                "bus": {"read_points": 31000}}
        return {"kernel": {"forks": 3}, "cpus": [cpu0, cpu]}

    assert compare(report(4.05001, 402, 27222), report(4.05001, 402, 27222)) == []
    assert compare(report(4.05001, 402, 27222), report(4.050055, 402, 27222)) == [
        "clocks: cpu 1 {'sim_s': 4.05001, 'ticks': {'sys': 3, 'idle': 402}, 'read_points': "
        "27222} -> {'sim_s': 4.050055, 'ticks': {'sys': 3, 'idle': 402}, 'read_points': "
        "27222}"]
    assert compare(report(4.0, 402, 9), report(4.0, 401, 9))[0].startswith("clocks: cpu 1 ")


@pytest.mark.parametrize("cmd", ["replay", "trace"])
def test_a_folder_that_is_no_run_directory_is_said_so(
        tmp_path: pathlib.Path, cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A campaign's folder names one of its runs to replay; any other folder without a
    run is not a run directory (not a run made without a record)."""
    from smp.cli import main

    def said(folder: pathlib.Path) -> str:
        assert main([cmd, str(folder)]) == 2
        return capsys.readouterr().err

    camp = tmp_path / "stress"
    camp.mkdir()
    (camp / "campaign.json").write_text("{}")
    head = f"smp {cmd}: {camp}: a campaign's folder: {cmd} one of its runs: smp {cmd} "
    assert said(camp) == f"{head}{camp / 'RUN'}\n"
    for name in ("run0002-s9", "run0001-s5"):
        (camp / name).mkdir()
    (camp / "run0002-s9" / "schedule.smpr").write_bytes(b"")
    assert said(camp) == f"{head}{camp / 'RUN'}, e.g. smp {cmd} {camp / 'run0002-s9'}\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("")
    assert said(other) == (f"smp {cmd}: {other}: not a run directory (no schedule.smpr, "
                           f"report.json or config.toml in it)\n")
