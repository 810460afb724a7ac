"""How a stress campaign schedules its machines, without machines: each run here is a
small Python process that writes a report.json (a panic, or a clean run) the way
``smp run`` does, so the campaign's own logic (start a run only when a slot is free, stop
at the first new failure, stop the machines still running, say what it did) is tested
exactly and fast. The machines themselves are tested in test_stress.py.

Also here: a campaign's machines import the same smp as the campaign, even when started
from a directory that holds another ``smp`` (a clone beside an installed package).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from smp.hunt.stress import Campaign, Progress, child_env, describe, run_campaign

pytestmark = pytest.mark.quick

# argv: run_dir, fail_index, block_index. Marks that it started; run `fail_index` panics,
# run `block_index` runs until it is interrupted (SIGINT: exit 130, as smp run does), the
# others end clean.
FAKE_RUN = textwrap.dedent("""
    import json, os, signal, sys, time
    rdir, fail, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    i = int(os.path.basename(rdir)[3:7])
    os.makedirs(rdir, exist_ok=True)
    open(os.path.join(os.path.dirname(rdir), f"started-{i}"), "w").close()
    def report(**kw):
        r = {"ok": True, "panic": None, "invariants": [], "findings": [], "problems": []}
        r.update(kw)
        with open(os.path.join(rdir, "report.json"), "w") as f:
            json.dump(r, f)
    if i == block:
        signal.signal(signal.SIGINT, lambda *a: (report(ok=False), os._exit(130)))
        open(os.path.join(os.path.dirname(rdir), f"blocking-{i}"), "w").close()
        time.sleep(60)
        sys.exit(3)
    if i == fail:
        deadline = time.monotonic() + 20           # fail once the blocking run blocks
        while block >= 0 and time.monotonic() < deadline and not os.path.exists(
                os.path.join(os.path.dirname(rdir), f"blocking-{block}")):
            time.sleep(0.01)
        report(ok=False, panic={"message": "panic: fake: a guard was off", "site": "x.py:1"})
        sys.stderr.write("cpu1: the machine server is gone (fake); stopping\\n")
        sys.exit(1)
    report()
""")


class FakeCampaign(Campaign):
    fail_index: int = 0
    block_index: int = -1

    def command(self, seed: int, run_dir: str) -> list[str]:
        return [sys.executable, "-c", FAKE_RUN, run_dir, str(self.fail_index),
                str(self.block_index)]


def _started(out: pathlib.Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("started-*"))


@pytest.mark.timeout(30)
def test_nothing_starts_after_the_first_failure(tmp_path: pathlib.Path) -> None:
    """Issue 16: ``--runs 4 --fail-point ...`` ran a second machine after the first one
    failed, because every run was handed to the pool up front."""
    out = tmp_path / "runs"
    c = FakeCampaign(None, runs=4, jobs=1, out_dir=str(out))
    seen: list[Progress] = []
    outcomes = run_campaign(c, lambda s: None, seen.append)
    assert _started(out) == [0]
    assert [o.index for o in outcomes] == [0]
    assert outcomes[0].new_failures
    lines, status = describe(outcomes, strict=False)
    assert status == 1
    assert lines[0].startswith("FAIL seed ") and "[panic] panic: fake" in lines[0]
    assert seen[0] == Progress(0, 4, 0, 0, seen[0].elapsed)      # shown from the start
    assert (seen[-1].done, seen[-1].failing, seen[-1].running) == (1, 1, 0)


@pytest.mark.timeout(30)
def test_what_a_machine_said_on_stderr_is_kept_in_its_run_directory(
        tmp_path: pathlib.Path) -> None:
    """A campaign's machines run with their standard error in a file, which ends up in
    the run directory (``stderr.txt``) when they said something, and its last line is
    shown with the failure: a CPU that exits says why only there ("cpu0 died: exit
    status 3" was all a campaign knew)."""
    out = tmp_path / "runs"
    c = FakeCampaign(None, runs=3, jobs=1, out_dir=str(out), keep_going=True)
    c.fail_index = 1
    outcomes = run_campaign(c, lambda s: None, lambda p: None)
    [failed] = [o for o in outcomes if o.new_failures]
    rdir = pathlib.Path(failed.run_dir)
    assert (rdir / "stderr.txt").read_text() == \
        "cpu1: the machine server is gone (fake); stopping\n"
    lines, _ = describe(outcomes, strict=False)
    assert f"     stderr:  cpu1: the machine server is gone (fake); stopping " \
        f"({rdir / 'stderr.txt'})" in lines
    # the runs that said nothing keep no file, here or beside their folders
    assert sorted(p.name for p in out.glob("**/stderr.txt")) == ["stderr.txt"]
    assert not list(out.glob("*.stderr"))


@pytest.mark.timeout(30)
def test_a_time_budget_ends_the_campaign_with_no_eta(tmp_path: pathlib.Path) -> None:
    """The budget spent, no run starts: the last progress is of a campaign that is over
    (no ETA for the runs that will never start)."""
    from smp.observe.progress import campaign_line
    c = FakeCampaign(None, runs=1000, jobs=1, out_dir=str(tmp_path / "runs"),
                     time_budget=0.5)
    c.fail_index = -1
    seen: list[Progress] = []
    said: list[str] = []
    outcomes = run_campaign(c, said.append, seen.append)
    assert 0 < len(outcomes) < 1000 and said == ["time budget of 0.5 s spent: no new runs"]
    last = seen[-1]
    assert (last.done, last.running, last.over) == (len(outcomes), 0, True), last
    assert last.eta is None and "ETA" not in campaign_line(last)
    assert not [p for p in seen[:-1] if p.over]


@pytest.mark.timeout(30)
def test_keep_going_runs_them_all(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "runs"
    c = FakeCampaign(None, runs=3, jobs=2, out_dir=str(out), keep_going=True)
    said: list[str] = []
    outcomes = run_campaign(c, said.append, lambda p: None)
    assert _started(out) == [0, 1, 2]
    assert [bool(o.new_failures) for o in outcomes] == [True, False, False]
    lines, status = describe(outcomes, strict=False)
    assert status == 1 and lines[-1].startswith("3 runs, 2 without a new failure")
    # the failure was told as it came (it can be replayed while the others run), as the
    # summary tells it again
    assert said == lines[:-1], said


def test_strict_counts_known_findings_as_failures_in_the_summary_too() -> None:
    """With --strict a run with a known finding fails the campaign (FAIL lines, exit 1):
    the last line said "1 runs, 1 without a new failure" beside them."""
    from smp.hunt.stress import RunOutcome
    from smp.observe.findings import Failure
    known = Failure("witness", "lock order reversal", (), known="F2")
    outcomes = [RunOutcome(0, 7, "runs/run0000-s7", 0, 1.0, [known]),
                RunOutcome(1, 8, "runs/run0001-s8", 0, 1.0, [])]
    lines, status = describe(outcomes, strict=False)
    assert status == 0 and lines[-1] == "2 runs, 2 without a new failure, known findings: F2 x1"
    lines, status = describe(outcomes, strict=True)
    assert status == 1 and lines[0].startswith("FAIL seed 7 [witness] (known F2)")
    assert describe(outcomes[1:], strict=False)[0] == ["1 run, 1 without a new failure"]
    assert lines[-1] == ("2 runs, 1 without a failure (--strict: known findings count), "
                         "known findings: F2 x1")


@pytest.mark.timeout(30)
def test_the_first_failure_stops_the_machines_still_running(tmp_path: pathlib.Path) -> None:
    """With two at a time, run 1 is still going when run 0 fails: it is interrupted (not
    waited for, not reported as a failure) and run 2 never starts."""
    out = tmp_path / "runs"
    c = FakeCampaign(None, runs=3, jobs=2, out_dir=str(out))
    c.fail_index, c.block_index = 1, 0     # run 0 blocks until interrupted; run 1 fails
    outcomes = run_campaign(c, lambda s: None, lambda p: None)
    assert _started(out) == [0, 1]
    stopped = [o for o in outcomes if o.stopped]
    assert [o.index for o in stopped] == [0] and stopped[0].exit_status == 130
    lines, status = describe(outcomes, strict=False)
    assert status == 1
    assert sum(1 for line in lines if line.startswith("FAIL")) == 1
    assert "1 stopped when the campaign stopped (run0000-" in lines[-1]


@pytest.mark.timeout(30)
def test_machines_import_the_campaigns_smp_not_the_working_directorys(
        tmp_path: pathlib.Path) -> None:
    """Issue 16: stress runs were started as ``python -m smp.cli`` in the working
    directory, so inside a clone they imported the clone, not the smp that runs the
    campaign. Here the working directory holds a decoy ``smp`` package."""
    decoy = tmp_path / "clone" / "smp"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    for name in ("__main__.py", "cli.py"):
        (decoy / name).write_text("print('DECOY'); raise SystemExit(42)\n")
    c = Campaign(None, runs=1, out_dir=str(tmp_path / "runs"))
    cmd = c.command(7, str(tmp_path / "runs" / "run0000-s7"))
    prefix = cmd[:cmd.index("run")]              # the interpreter and the module
    r = subprocess.run([*prefix, "--version"], cwd=decoy.parent, env=child_env(),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "DECOY" not in r.stdout, r.stdout + r.stderr
    assert r.stdout.startswith("smp ")
    import smp
    r = subprocess.run([*prefix[:prefix.index("-m")], "-c",
                        "import smp; print(smp.__file__)"],
                       cwd=decoy.parent, env=child_env(), capture_output=True, text=True,
                       timeout=20)
    assert r.stdout.strip() == os.path.abspath(smp.__file__)


def test_a_run_with_several_failures_names_its_folder_and_commands_once() -> None:
    """Each failure of a run is a FAIL line; its run dir, rerun and replay follow once
    (they were repeated after each failure: five blocks for one panicking run)."""
    from smp.hunt.stress import RunOutcome
    from smp.observe.findings import Failure
    out = RunOutcome(0, 7, "runs/run0000-s7", 1, 1.0,
                     [Failure("panic", "panic: fatal trap 12", ()),
                      Failure("lockkey", "unlocked load of proc.p_sflag", ())])
    lines, status = describe([out], strict=False)
    assert status == 1
    assert lines == ["FAIL seed 7 [panic] panic: fatal trap 12",
                     "FAIL seed 7 [lockkey] unlocked load of proc.p_sflag",
                     "     run dir: runs/run0000-s7",
                     "     rerun:   smp run runs/run0000-s7/config.toml",
                     "1 run, 0 without a new failure"]


def test_a_failure_that_names_objects_offers_to_watch_them(tmp_path: pathlib.Path) -> None:
    """The objects a recorded run's failures name (a panic's ``vm_page#812``, a field's
    ``&proc#12.p_lock``) come with the replay that prints their whole history, each
    once; a run without a record offers no replay and no watch."""
    from smp.hunt.stress import RunOutcome
    from smp.observe.findings import Failure
    rdir = tmp_path / "run0000-s7"
    rdir.mkdir()
    (rdir / "schedule.smpr").write_bytes(b"")
    failures = [Failure("panic", "vm_object_terminate: freeing wired page vm_page#812 "
                        "(object vm_object#640 pindex 3)", ()),
                Failure("hangs", "a hold of &proc#12.p_lock never dropped; vm_page#812", ())]
    lines, _ = describe([RunOutcome(0, 7, str(rdir), 1, 1.0, failures)], strict=False)
    assert lines[-3:-1] == [
        f"     replay:  smp replay {rdir}",
        f"     watch:   smp replay {rdir} --watch vm_page#812 --watch vm_object#640 "
        f"--watch proc#12.p_lock"], lines
    (rdir / "schedule.smpr").unlink()
    lines, _ = describe([RunOutcome(0, 7, str(rdir), 1, 1.0, failures)], strict=False)
    assert not [line for line in lines if "replay" in line], lines


def test_a_runs_failures_come_in_the_order_the_machine_found_them() -> None:
    """The deadlock was printed before the lock order reversal that led to it; the
    machine's operation orders them (what has none comes last)."""
    from smp.hunt.stress import RunOutcome
    from smp.observe.findings import Failure
    out = RunOutcome(0, 7, "runs/run0000-s7", 1, 1.0,
                     [Failure("deadlock", "deadlock: ...", (), op=36921),
                      Failure("invariant", "U-area lost", ()),
                      Failure("witness", "lock order reversal: ...", (), op=2867)])
    lines, _ = describe([out], strict=False)
    assert [line.split("]")[0] for line in lines[:3]] == [
        "FAIL seed 7 [witness", "FAIL seed 7 [deadlock", "FAIL seed 7 [invariant"]


def test_an_interrupted_campaign_counts_its_runs(tmp_path: pathlib.Path) -> None:
    """The closing line of a campaign cut short by a signal: the runs that ended, those
    stopped, those a second signal left unwaited for, those never started; and its record,
    when it has no closing lines (a signal before the first run), says so, not "so far"."""
    import signal

    from smp.hunt.stress import (CampaignLog, Interrupted, RunOutcome, campaign_lines,
                                 read_campaign)
    outcomes = [RunOutcome(0, 7, "runs/run0000-s7", 0, 1.0, []),
                RunOutcome(2, 9, "runs/run0002-s9", 130, 1.0, [], stopped=True)]
    e = Interrupted(signal.SIGTERM, outcomes, 1)
    assert e.status == 143
    assert e.line(6) == ("interrupted by SIGTERM: 1 of 6 runs ended, 1 stopped, 1 not "
                         "waited for, 3 never started")
    assert Interrupted(signal.SIGINT, [], 0).line(2) == (
        "interrupted by SIGINT: 0 of 2 runs ended, 0 stopped, 2 never started")
    log = CampaignLog(str(tmp_path), Campaign(None, 2, out_dir=str(tmp_path)),
                      ["smp", "stress"])
    log.close("interrupted", 130)
    lines = campaign_lines(read_campaign(str(tmp_path)))
    assert lines[-1] == "0 of 2 runs ended before the campaign was interrupted", lines
