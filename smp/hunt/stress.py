"""Stress campaigns: many short runs with derived seeds, hunting lock races.

``smp stress CONFIG --runs N --jobs J`` runs N machines, J at a time, each a real ``smp
run`` in its own process group with its own run directory, the seed of run i derived from
the campaign's seed. After each run it reads ``report.json`` and classifies what went
wrong (``smp.observe.findings``). It stops at the first run with a new (not known) failure
unless told to go on, and prints for each failure the seed, the detector, a one-line
summary, the run directory and one command that reruns exactly that run (the run's own
resolved ``config.toml``: same seed, same chaos seed, same fail points).

Where the machines run is a :class:`Runner`'s business: :class:`LocalRunner` starts them
on this host, ``--jobs`` at a time; ``smp.hunt.cluster.ClusterRunner`` sends each run to a
Dask cluster as one task and brings its run directory back into the campaign's folder.
The campaign itself (seeds, slots, stopping, the summary) is the same code for both, so its
output does not depend on where its runs ran.

Exit status: 0 no new failure; 1 a failure (or, with ``--strict``, a known finding); 2
usage; 130/143 Ctrl-C/SIGTERM, which stop every machine of the campaign first; the runs
they stopped are outcomes marked stopped, and the closing lines say how many runs ended,
were stopped and never started (:class:`Interrupted`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Protocol, Sequence

from smp.machine.files import write_error
from smp.machine.watch import named
from smp.observe.coverage import Coverage, merge, unpacked
from smp.observe.findings import Failure, KnownFinding, classify, load_known
from smp.hw.seeds import derive_int


# in a campaign's run directory: what its machine said on standard error (smp run's own
# and its CPUs' messages: a CPU that exits says why there), when it said anything
STDERR_FILE = "stderr.txt"


class CampaignError(Exception):
    """A campaign that cannot start or go on (a cluster that cannot be used): the message
    says why; exit status 2."""


def derive_seed(base: int, i: int) -> int:
    """The seed of run ``i`` of a campaign with seed ``base`` (stable across versions and
    hosts: ``smp.hw.seeds``)."""
    return derive_int(base, "campaign", i) % (2**31 - 1) + 1


@dataclasses.dataclass
class RunOutcome:
    index: int
    seed: int
    run_dir: str
    exit_status: int
    wall_s: float
    failures: list[Failure]
    error: str = ""
    stopped: bool = False             # stopped by the campaign (a failure, a signal)
    attempts: int = 1                 # > 1: lost with a cluster worker, run again
    coverage: dict[str, Any] | None = None     # debug.coverage: report.json's, and sources

    @property
    def new_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.known is None]

    @property
    def known(self) -> list[Failure]:
        return [f for f in self.failures if f.known is not None]


@dataclasses.dataclass
class Campaign:
    config: str | None
    runs: int
    jobs: int = 1
    seed: int = 1
    chaos: str | None = None
    fail_points: Sequence[str] = ()
    overrides: Sequence[str] = ()
    duration: float | None = None
    time_budget: float | None = None
    keep_going: bool = False
    strict: bool = False
    out_dir: str = "runs/stress"
    run_timeout: float = 600.0
    cluster: str | None = None        # a Dask cluster (smp.hunt.cluster), or this host

    def command(self, seed: int, run_dir: str) -> list[str]:
        # -P: the working directory is not on sys.path (child_env says why)
        cmd = [sys.executable, "-P", "-m", "smp", "run"]
        if self.config:
            cmd.append(self.config)
        return cmd + self.run_args(seed, run_dir)

    def run_args(self, seed: int, run_dir: str) -> list[str]:
        """``smp run``'s arguments after the config: what makes run ``seed`` of this
        campaign (a cluster worker puts them after its own copy of the config)."""
        cmd: list[str] = []
        for o in self.overrides:
            cmd += ["--set", o]
        cmd += ["--set", f"run.seed={seed}"]
        if self.chaos:
            cmd += ["--set", f"debug.chaos={self.chaos}"]
        if self.duration is not None:
            cmd += ["--set", f"run.duration={self.duration}"]
        for fp in self.fail_points:
            cmd += ["--fail-point", fp]
        cmd += ["--run-dir", run_dir, "--quiet"]
        return cmd


def package_root() -> str:
    """The directory this smp was imported from (a source tree, or site-packages)."""
    import smp
    return os.path.dirname(os.path.dirname(os.path.abspath(smp.__file__)))


def child_env() -> dict[str, str]:
    """The environment of a campaign's machines: they import the same smp (and so the same
    smp.kernel and smp.hw) as the campaign, wherever they are started from. Together with
    ``python -P`` (no current directory on sys.path), a clone in the working directory
    cannot shadow an installed smp, nor another tree the one on PYTHONPATH."""
    env = dict(os.environ)
    root = package_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    return env


class _Procs:
    """The campaign's machines, so that Ctrl-C (or the first failure) can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.stopping = False
        self.env = child_env()

    def run(self, cmd: list[str], timeout: float, run_dir: str) -> int:
        with self.lock:
            if self.stopping:
                return -1
            with open(stderr_file(run_dir), "wb") as err:
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                     start_new_session=True, env=self.env)
            self.procs.add(p)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return -9
        finally:
            with self.lock:
                self.procs.discard(p)
            keep_stderr(run_dir)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                try:
                    os.killpg(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass


def stderr_file(run_dir: str) -> str:
    """Where a campaign's machine writes its standard error while it runs: beside its run
    directory, which the machine makes itself (``keep_stderr`` moves it in)."""
    return os.path.normpath(run_dir) + ".stderr"


def keep_stderr(run_dir: str) -> None:
    """What the machine said on standard error (a CPU that lost its server says why
    there, before it exits), into its run directory as ``stderr.txt``; nothing if it
    said nothing. Left beside the directory if the machine made none."""
    path = stderr_file(run_dir)
    try:
        if os.path.getsize(path) == 0:
            os.unlink(path)
        elif os.path.isdir(run_dir):
            os.replace(path, os.path.join(run_dir, STDERR_FILE))
    except OSError:
        pass


def read_outcome(i: int, seed: int, rdir: str, status: int, wall: float, stopping: bool,
                 known: list[KnownFinding]) -> RunOutcome:
    """What run ``i`` came to, from its exit status and its directory's ``report.json``
    (wherever the machine ran: the directory is here by now)."""
    if stopping and status == 130:             # SIGINTed by the campaign, not failed
        return RunOutcome(i, seed, rdir, status, wall, [], stopped=True)
    report: dict[str, Any] = {}
    try:
        with open(os.path.join(rdir, "report.json")) as f:
            report = json.load(f)
        failures = classify(report, known)
    except (OSError, json.JSONDecodeError) as e:
        if status == 2:
            return RunOutcome(i, seed, rdir, status, wall, [], f"usage error: {e}")
        failures = [Failure("machine", f"no report (exit status {status}): {e}", ())]
    if status not in (0, 1) and not failures:
        failures = [Failure("machine", f"exit status {status}", ())]
    counts = (report.get("coverage") or {}).get("counts")
    coverage = {"counts": counts, "sources": (report.get("policy") or {}).get("sources")} \
        if counts else None
    return RunOutcome(i, seed, rdir, status, wall, failures, coverage=coverage)


def campaign_coverage(outcomes: Sequence[RunOutcome], out_dir: str) -> list[str]:
    """With debug.coverage: the lines its runs ran, summed over them, written into the
    campaign's folder (``vm_glue.c.gcov``, ``coverage.info``); what the closing lines say
    of them (nothing when no run counted)."""
    counted = [o.coverage for o in outcomes if o.coverage is not None]
    if not counted:
        return []
    cov = Coverage(merge(unpacked(c["counts"]) for c in counted),
                   next((c["sources"] for c in counted if c.get("sources")), None),
                   runs=len(counted))
    try:
        cov.write(out_dir)
    except OSError as e:
        return [f"coverage not written: {write_error(e.filename or out_dir, e)}"]
    return [line.replace("coverage: ", f"coverage over {len(counted)} runs: ", 1)
            for line in cov.lines()]


class Runner(Protocol):
    """Where a campaign's machines run. ``run_campaign`` asks for ``slots()`` machines at
    most, starts each run with ``start`` (a future of its outcome; None when the campaign
    stopped before the run started), calls ``tick`` every PROGRESS_S (``idle`` instead
    when it has not one slot: it waits, at most that long, for one), ``stop`` at the
    first failure (machines still running are stopped, and come back ``stopped``),
    ``interrupt`` on Ctrl-C or SIGTERM (the same: the campaign waits for them to come
    back) and ``close`` at the end, whatever happened."""

    def slots(self) -> int: ...
    def start(self, i: int, seed: int, run_dir: str) -> concurrent.futures.Future[
        RunOutcome | None]: ...
    def tick(self) -> None: ...
    def idle(self, timeout: float) -> None: ...
    def stop(self) -> None: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


class LocalRunner:
    """Machines on this host, ``c.jobs`` at a time, each a ``smp run`` subprocess."""

    def __init__(self, c: Campaign) -> None:
        self.c = c
        self.known = load_known()
        self.procs = _Procs()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(c.jobs, 1))

    def slots(self) -> int:
        return max(self.c.jobs, 1)

    def start(self, i: int, seed: int, run_dir: str) -> concurrent.futures.Future[
            RunOutcome | None]:
        return self.pool.submit(self._one, i, seed, run_dir)

    def _one(self, i: int, seed: int, rdir: str) -> RunOutcome | None:
        t = time.monotonic()
        status = self.procs.run(self.c.command(seed, rdir), self.c.run_timeout, rdir)
        if status == -1:                       # the campaign stopped before it started
            return None
        return read_outcome(i, seed, rdir, status, time.monotonic() - t,
                            self.procs.stopping, self.known)

    def tick(self) -> None:
        pass

    def idle(self, timeout: float) -> None:
        raise AssertionError("a local campaign always has a slot")

    def stop(self) -> None:
        self.procs.stop()

    def interrupt(self) -> None:
        self.procs.stop()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a campaign is: for a progress bar or a status line."""
    done: int                  # runs finished (stopped ones not counted)
    total: int                 # runs asked for
    failing: int               # finished runs with a new failure (or known, with --strict)
    running: int               # machines running now
    elapsed: float             # wall seconds since the campaign started
    over: bool = False         # the campaign has ended: no run is running or will start

    @property
    def rate(self) -> float:
        """Runs finished per wall minute."""
        return 60.0 * self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Wall seconds left at the pace so far (None before the first run ends, and once
        the campaign is over: a time budget or a failure ends it short of its runs)."""
        if self.done == 0 or self.over:
            return None
        return (self.total - self.done) * self.elapsed / self.done


PROGRESS_S = 1.0        # how often ``progress`` is called while runs go on
WATCH_SHOWN = 4         # a failure's objects offered to ``smp replay --watch``, at most


def prepare_out_dir(path: str) -> None:
    """The campaign's folder given as ``--out``, made before anything starts: a
    CampaignError (exit 2) says why for a path that is a file, cannot be made, or already
    holds files (a campaign's runs are named by index and seed: another campaign's, or
    anything else, would lie among them)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CampaignError(f"--out {path}: exists and is not a directory")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            os.mkdir(path)              # made here: no other campaign has it
        except FileExistsError:
            if not os.path.isdir(path):
                raise CampaignError(f"--out {path}: exists and is not a directory") from None
    except OSError as e:                # (one that exists must be empty, below)
        raise CampaignError(f"--out {path}: cannot make it: "
                            f"{e.strerror or e}") from None
    try:
        held = sorted(os.listdir(path))
    except OSError as e:
        raise CampaignError(f"--out {path}: cannot use it: "
                            f"{e.strerror or e}") from None
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise CampaignError(f"--out {path}: is not empty (it holds {shown}); give a "
                            f"new directory")


CAMPAIGN_FILE = "campaign.json"     # in the campaign's folder: what ran and what came of it


class CampaignLog:
    """The campaign's own record, ``OUT/campaign.json``, so that nothing it printed is lost
    with the terminal: the command and its settings, then every run as it ends (seed,
    exit status, failures, the rerun and replay commands), then how the campaign ended and
    its closing lines. ``smp report OUT`` prints it again. Made exclusively before the
    first run: it claims the folder (two campaigns given the same empty ``--out`` at the
    same moment: the second is refused); rewritten whole (renamed into place), so a
    reader never sees half of it: at once after a failing run, at most every
    ``WRITE_EVERY_S`` after clean ones (a campaign of thousands of runs rewrites a file of
    megabytes), and at the end."""

    WRITE_EVERY_S = 2.0

    def __init__(self, out_dir: str, c: "Campaign", command: Sequence[str]) -> None:
        import smp
        self.path = os.path.join(out_dir, CAMPAIGN_FILE)
        self.doc: dict[str, Any] = {
            "smp": smp.__version__, "command": list(command),
            "config": c.config, "seed": c.seed, "runs": c.runs,
            "jobs": None if c.cluster else c.jobs, "cluster": c.cluster,
            "chaos": c.chaos, "fail_points": list(c.fail_points),
            "overrides": list(c.overrides), "duration": c.duration,
            "time_budget": c.time_budget, "keep_going": c.keep_going, "strict": c.strict,
            "started": _now(), "ended": None,
            "state": "running", "exit_status": None, "outcomes": [], "summary": []}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise CampaignError(f"--out {out_dir}: another campaign took it (it holds "
                                f"{CAMPAIGN_FILE}); give a new directory") from None
        except OSError as e:
            raise CampaignError(f"--out {out_dir}: cannot write {CAMPAIGN_FILE} in it: "
                                f"{e.strerror or e}") from None
        with os.fdopen(fd, "w") as f:
            f.write(_campaign_json(self.doc))
        self.error = ""
        self.written = time.monotonic()

    def add(self, out: RunOutcome) -> None:
        """Run ``out`` has ended (or was stopped)."""
        self.doc["outcomes"].append({
            "index": out.index, "seed": out.seed, "run_dir": out.run_dir,
            "exit_status": out.exit_status, "wall_s": round(out.wall_s, 3),
            "error": out.error, "stopped": out.stopped, "attempts": out.attempts,
            "failures": [{"detector": f.detector, "summary": f.summary,
                          "sites": list(f.sites), "known": f.known, "op": f.op}
                         for f in out.failures],
            "rerun": rerun_command(out), "replay": replay_of(out.run_dir)})
        if out.failures or out.error or time.monotonic() - self.written >= self.WRITE_EVERY_S:
            self._write()

    def close(self, state: str, status: int, summary: Sequence[str] = ()) -> None:
        """The campaign has ended: ``state`` is done, interrupted or error."""
        self.doc["outcomes"].sort(key=lambda o: o["index"])
        self.doc.update(state=state, exit_status=status, summary=list(summary),
                        ended=_now())
        self._write()

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        self.written = time.monotonic()
        try:
            with open(tmp, "w") as f:       # one outcome a line: readable, and the C
                f.write(_campaign_json(self.doc))    # encoder (indent= is the slow one)
            os.replace(tmp, self.path)
        except OSError as e:           # said once; the campaign itself goes on
            if not self.error:
                self.error = write_error(self.path, e)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _campaign_json(doc: dict[str, Any]) -> str:
    head = {k: v for k, v in doc.items() if k != "outcomes"}
    runs = ",\n  ".join(json.dumps(o) for o in doc["outcomes"])
    return (json.dumps(head)[:-1] + ', "outcomes": [' + (f"\n  {runs}\n" if runs else "")
            + "]}\n")


def read_campaign(out_dir: str) -> dict[str, Any]:
    """``OUT/campaign.json`` (ValueError or OSError if it is not one)."""
    with open(os.path.join(out_dir, CAMPAIGN_FILE)) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not {"command", "outcomes", "state"} <= doc.keys():
        raise ValueError("not a campaign record of smp stress")
    return doc


def campaign_lines(doc: dict[str, Any]) -> list[str]:
    """``smp report OUT``: the campaign's command, how it ended, and its closing lines
    (while it runs, or when it was cut short without them: the runs ended by then)."""
    state = str(doc["state"])
    lines = [f"campaign: {shlex.join(str(a) for a in doc['command'])}",
             f"started {doc.get('started')}"
             + (f", ended {doc['ended']} ({state}, exit status {doc['exit_status']})"
                if doc.get("ended") else f", {state}")]
    if state in ("done", "interrupted") and doc.get("summary"):
        return lines + [str(s) for s in doc["summary"]]
    lines += [str(s) for s in doc.get("summary") or []]          # an error's message
    for o in doc["outcomes"]:
        failures = [(f["detector"], f.get("known"), f["summary"]) for f in o["failures"]
                    if doc.get("strict") or not f.get("known")]
        if failures:
            lines += _fail_block(o["seed"], failures, o["run_dir"], o["rerun"],
                                 o.get("replay"))
    done = [o for o in doc["outcomes"] if not o["stopped"]]
    until = {"interrupted": "before the campaign was interrupted",
             "error": "before the campaign's error"}
    lines.append(f"{len(done)} of {doc['runs']} runs ended {until.get(state, 'so far')}")
    return lines


def run_campaign(c: Campaign, say: Callable[[str], None],
                 progress: Callable[[Progress], None],
                 runner: Runner | None = None,
                 log: CampaignLog | None = None) -> list[RunOutcome]:
    """Run the campaign: at most ``runner.slots()`` machines at a time (``c.jobs`` on this
    host by default), each started only when a slot is free, so that nothing new starts
    once a run has failed (unless ``c.keep_going``); machines still running then are
    stopped (SIGINT) and their outcomes marked ``stopped``. ``progress`` is called at the
    start, after every run and every PROGRESS_S wall seconds; ``log`` is told of every run
    as it ends. The runner is closed at the end, whatever happened.

    SIGINT or SIGTERM stops the machines the same way, waits for them (a second signal:
    no longer) and raises :class:`Interrupted` with every outcome so far, the stopped runs
    among them."""
    os.makedirs(c.out_dir, exist_ok=True)
    runner = runner or LocalRunner(c)
    caught: list[int] = []
    restore_signals = _take_signals(caught)
    outcomes: list[RunOutcome] = []
    t0 = time.monotonic()
    running: set[concurrent.futures.Future[RunOutcome | None]] = set()
    started = failing = 0
    stop = False

    def report_progress(over: bool = False) -> None:
        done = sum(1 for o in outcomes if not o.stopped)
        progress(Progress(done, c.runs, failing, len(running), time.monotonic() - t0,
                          over))

    def ended(out: RunOutcome) -> None:
        outcomes.append(out)
        if log is not None:
            log.add(out)

    try:
        report_progress()
        while True:
            _stop_if_signalled(caught)
            runner.tick()
            while not stop and started < c.runs and len(running) < runner.slots():
                if c.time_budget is not None and time.monotonic() - t0 > c.time_budget:
                    say(f"time budget of {c.time_budget:g} s spent: no new runs")
                    stop = True
                    break
                seed = derive_seed(c.seed, started)
                rdir = os.path.join(c.out_dir, f"run{started:04d}-s{seed}")
                running.add(runner.start(started, seed, rdir))
                started += 1
            if not running:
                if stop or started >= c.runs:
                    break
                runner.idle(PROGRESS_S)        # not one slot: wait for a cluster worker
                report_progress()
                continue
            done, running = concurrent.futures.wait(
                running, timeout=PROGRESS_S,
                return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                out = fut.result()
                if out is None:
                    continue
                ended(out)
                if out.error:
                    say(f"run {out.index}: {out.error}")
                    stop = True
                    runner.stop()
                if out.new_failures or (c.strict and out.known):
                    failing += 1
                    if c.keep_going:           # at once: it can be looked at meanwhile
                        for line in failure_lines(out, c.strict):
                            say(line)
                    if not c.keep_going and not stop:
                        stop = True
                        runner.stop()          # the first failure ends the campaign
            report_progress()
        report_progress(over=True)             # the last line: where it ended, no ETA
    except KeyboardInterrupt as e:
        runner.interrupt()
        say("interrupted: stopping the campaign's machines")
        try:                        # they come back stopped: outcomes, as at a failure
            while running:
                done, running = concurrent.futures.wait(
                    running, timeout=PROGRESS_S,
                    return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    try:
                        out = fut.result()
                    except Exception:            # noqa: BLE001  (stopping anyway)
                        out = None
                    if out is not None:
                        ended(out)
                report_progress()
            report_progress(over=True)
        except KeyboardInterrupt:   # a second signal: not waited for
            pass
        outcomes.sort(key=lambda o: o.index)
        raise Interrupted(signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT,
                          outcomes, len(running)) from None
    finally:
        try:
            runner.close()
        except KeyboardInterrupt:   # a second signal: not waited for (the first is
            pass                    # in ``caught``, raised below if nothing else is)
        finally:
            restore_signals()
    outcomes.sort(key=lambda o: o.index)
    if caught:                      # a signal during the last steps stopped it too
        raise Interrupted(signal.Signals(caught[0]), outcomes, 0)
    return outcomes


class Terminated(KeyboardInterrupt):
    """SIGTERM to a campaign: it stops its machines as Ctrl-C does; exit status 143."""


class Interrupted(KeyboardInterrupt):
    """A campaign stopped by ``signum`` (SIGINT or SIGTERM), its machines stopped first:
    ``outcomes`` are its runs that ended or were stopped (``stopped``), by index;
    ``unended`` runs had started but were not waited for (a second signal); the others
    never started. Exit status 128 + signum."""

    def __init__(self, signum: signal.Signals, outcomes: list[RunOutcome],
                 unended: int) -> None:
        super().__init__(signum.name)
        self.signum = signum
        self.outcomes = outcomes
        self.unended = unended

    @property
    def status(self) -> int:
        return 128 + self.signum

    def line(self, runs: int) -> str:
        """The closing line that says so, after :func:`describe`'s, of ``runs`` asked for."""
        stopped = sum(1 for o in self.outcomes if o.stopped)
        done = len(self.outcomes) - stopped
        return (f"interrupted by {self.signum.name}: {done} of {runs} runs ended, "
                f"{stopped} stopped, "
                + (f"{self.unended} not waited for, " if self.unended else "")
                + f"{runs - len(self.outcomes) - self.unended} never started")


def _take_signals(caught: list[int]) -> Callable[[], None]:
    """Ctrl-C and SIGTERM stop a campaign in order, as ``smp run`` stops its machine: the
    handler only notes the signal in ``caught``, and the campaign's loop, within
    PROGRESS_S, stops its machines (:func:`_stop_if_signalled`: the KeyboardInterrupt
    above), never from inside a runner's call (a Dask client interrupted in the middle
    of one logs tracebacks and may not stop). A second signal stops the waiting for
    them at once (the machines have their SIGINT by then). Also when the campaign was
    started with SIGINT ignored (a shell's background job: the signal would be lost,
    and the campaign run on). Returns what puts the old dispositions back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def note(signum: int, frame: Any) -> None:
        again = bool(caught)
        caught.append(signum)
        if again:
            _stop_if_signalled([signum])
    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return restore


def _stop_if_signalled(caught: list[int]) -> None:
    if caught:
        raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()


def rerun_command(out: RunOutcome) -> str:
    return f"smp run {os.path.join(out.run_dir, 'config.toml')}"


def replay_of(run_dir: str) -> str | None:
    """``smp replay RUN_DIR``: the run again, exactly, from its recorded schedule (None
    when it has none: ``run.record = false``, or a record too big to bring back from a
    cluster worker)."""
    from smp.hw.record import RECORD_FILE
    return f"smp replay {run_dir}" if os.path.exists(os.path.join(run_dir, RECORD_FILE)) \
        else None


def failure_lines(out: RunOutcome, strict: bool) -> list[str]:
    """A failing run's lines: one FAIL line per failure (the seed, the detector, a
    summary), in the order the machine found them (the first is likeliest the cause: a
    lock order reversal before the deadlock it led to), then its directory and the
    commands that rerun and replay it, once."""
    shown = sorted(out.new_failures + (out.known if strict else []),
                   key=lambda f: (f.op is None, f.op or 0))
    if not shown:
        return []
    return _fail_block(out.seed, [(f.detector, f.known, f.summary) for f in shown],
                       out.run_dir, rerun_command(out), replay_of(out.run_dir))


def _fail_block(seed: int, failures: list[tuple[str, str | None, str]], run_dir: str,
                rerun: str, replay: str | None) -> list[str]:
    lines = [f"FAIL seed {seed} [{detector}]" + (f" (known {known})" if known else "")
             + f" {summary}" for detector, known, summary in failures]
    lines += [f"     run dir: {run_dir}"]
    said = _last_said(run_dir)
    if said:
        lines.append(f"     stderr:  {said} ({os.path.join(run_dir, STDERR_FILE)})")
    lines.append(f"     rerun:   {rerun}")
    if replay:
        lines.append(f"     replay:  {replay}")
        watch = watch_command(replay, [summary for _, _, summary in failures])
        if watch:
            lines.append(f"     watch:   {watch}")
    return lines


def _last_said(run_dir: str) -> str | None:
    """The last line the run's machine said on standard error (a CPU that exited says
    why), if it said anything."""
    try:
        with open(os.path.join(run_dir, STDERR_FILE), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 4096, 0))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    said = [line.strip() for line in tail if line.strip()]
    return said[-1][:200] if said else None


def watch_command(replay: str, texts: Sequence[str]) -> str | None:
    """``smp replay DIR --watch ...`` of the objects and fields ``texts`` name (the first
    WATCH_SHOWN): their history, access by access. None if they name none."""
    objs = list(dict.fromkeys(w for text in texts for w in named(text)))[:WATCH_SHOWN]
    return f"{replay} " + " ".join(f"--watch {w}" for w in objs) if objs else None


def describe(outcomes: list[RunOutcome], strict: bool,
             cluster: bool = False) -> tuple[list[str], int]:
    """The campaign's closing lines and exit status; ``cluster``: the campaign ran on a
    Dask cluster, and the last line says how many runs were lost with a worker."""
    lines = []
    status = 0
    known_count: dict[str, int] = {}
    stopped = [o for o in outcomes if o.stopped]
    outcomes = [o for o in outcomes if not o.stopped]
    for out in outcomes:
        for f in out.known:
            known_count[f.known or "?"] = known_count.get(f.known or "?", 0) + 1
        if out.error:
            status = 2
        failed = failure_lines(out, strict)
        if failed:
            status = max(status, 1)
            lines += failed
    # with --strict a known finding fails a run too: the count says so
    clean = sum(1 for o in outcomes
                if not o.new_failures and not o.error and not (strict and o.known))
    runs = f"{len(outcomes)} run" + ("" if len(outcomes) == 1 else "s")
    lines.append(f"{runs}, {clean} without a "
                 + ("failure (--strict: known findings count)" if strict else "new failure")
                 + (", known findings: " + ", ".join(f"{k} x{n}" for k, n
                                                     in sorted(known_count.items()))
                    if known_count else "")
                 + (f"; {len(stopped)} stopped when the campaign stopped "
                    f"({', '.join(os.path.basename(o.run_dir) for o in stopped)})"
                    if stopped else "")
                 + (f"; {sum(o.attempts - 1 for o in outcomes + stopped)} lost with a "
                    f"worker and retried" if cluster else ""))
    return lines, status


__all__ = ["CAMPAIGN_FILE", "STDERR_FILE", "Campaign", "CampaignError", "CampaignLog",
           "Interrupted", "LocalRunner", "Progress", "RunOutcome", "Runner",
           "campaign_coverage", "campaign_lines", "child_env", "derive_seed", "describe",
           "failure_lines", "keep_stderr", "read_campaign", "read_outcome", "replay_of",
           "rerun_command", "run_campaign", "stderr_file", "watch_command"]
