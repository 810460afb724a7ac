"""Whole machines: boot, run and stop with the real server and CPU processes, through the
Python API and through ``python -m smp.cli``; and the ways a run can end early: a config
error, SIGINT/SIGTERM, a CPU process killed, the launcher killed. Every test waits on
events (a process exit, a log line, a file) with a hard deadline, and the autouse
``no_orphans`` fixture (conftest.py) fails any test that leaves a process behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from helpers import cli, cli_cmd, cli_env, describe, read_text, wait_for
from smp.run.config import load_config

pytestmark = pytest.mark.long

# Short runs. Simulated time passes during the boot too, so bigger machines run longer:
# every CPU must have booted and run its threads before the end for a run to prove
# anything. Virtual time: the boot takes the same simulated time however busy the host.
FAST = ["run.duration=2"]
BOOT_RUN = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.5}
PIDS_RE = re.compile(r"server pid (\d+), cpu pids? ([\d, ]+);")  # "cpu pid" of one


def parse_pids(line: str) -> tuple[int, list[int]] | None:
    m = PIDS_RE.search(line)
    if not m:
        return None
    return int(m.group(1)), [int(x) for x in m.group(2).split(",")]


# -- the Python API ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("ncpus", [1, 2, 4, 8])
def test_machine_boots_runs_and_stops(run: Any, ncpus: int) -> None:
    seen: dict[str, Any] = {}

    def log(line: str) -> None:
        # Called by the launcher right after it forked the machine: check the pids it
        # names against the live processes while they exist.
        pids = parse_pids(line)
        if pids is None:
            return
        server, cpus = pids
        me = os.getpid()
        seen["server"], seen["cpus"] = server, cpus
        seen["children"] = {p.pid for p in psutil.Process(me).children()}
        seen["cpu_parents"] = [psutil.Process(pid).ppid() for pid in cpus]

    res = run([f"machine.cpus={ncpus}", f"run.duration={BOOT_RUN[ncpus]}"], log=log)
    r = res.report
    assert res.exit_status == 0 and r["ok"], describe(res)
    assert r["reason"] == "end of run"
    assert r["panic"] is None and r["problems"] == [] and r["invariants"] == []
    assert r["kernel"]["invariant_violations"] == 0
    # every counter the kernel registered is there, zero if never counted: a path the
    # run never took shows as 0, not absent
    registered = r["policy"]["counters"]["help"]
    assert set(registered) <= set(r["kernel"]), set(registered) - set(r["kernel"])

    assert "cpus" in seen, "the launcher never logged the machine's pids"
    assert len(seen["cpus"]) == ncpus
    assert seen["cpu_parents"] == [os.getpid()] * ncpus, "CPUs are not our children"
    assert {seen["server"], *seen["cpus"]} <= seen["children"]

    assert [c["id"] for c in r["cpus"]] == list(range(ncpus))
    pids = [c["pid"] for c in r["cpus"]]
    assert len(set(pids)) == ncpus, f"CPU pids not distinct: {pids}"
    assert pids == seen["cpus"], "the CPUs reported other pids than the launcher started"
    assert os.getpid() not in pids and seen["server"] not in pids
    for c in r["cpus"]:
        assert c["reported"], f"cpu{c['id']} sent no final report"
        assert sum(c["ticks"].values()) > 0, f"cpu{c['id']} took no clock tick"
        assert c["ctxsw"] > 0, f"cpu{c['id']} never switched threads: did it boot?"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in [seen["server"], *pids])

    rdir = pathlib.Path(res.run_dir)
    on_disk = json.loads((rdir / "report.json").read_text())
    assert on_disk["ok"] is True and [c["pid"] for c in on_disk["cpus"]] == pids
    assert (rdir / "config.toml").is_file() and (rdir / "log.txt").is_file()
    assert not (rdir / "crash.txt").exists()


@pytest.mark.timeout(90)
def test_user_land_starts_once_every_cpu_has_booted(run: Any) -> None:
    """As in FreeBSD, where init runs only after every SYSINIT: no program runs while an AP
    still boots. (Each CPU's init started its programs at once; an AP slow to boot found
    memory gone to them, waited for memory in its own init's fork and never made the
    pageout daemon placed on it: a stress campaign's run with no pagedaemon, every fork
    in vmwait.) cpu 2's boot sleeps half a simulated second; meanwhile no process runs a
    program; afterwards programs run."""
    from helpers import result, sysinit
    from smp.kernel import param
    from smp.kernel.kern import kern_globals
    from smp.kernel.kern.kern_proc import FOREACH_PROC_IN_SYSTEM
    from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
    from smp.kernel.kern.kern_synch import tsleep
    from smp.kernel.kern.kern_thread import curthread
    from smp.kernel.machine import cpu as md
    from smp.kernel.sys.param import PWAIT
    from smp.kernel.userland.programs import PROGRAMS

    def slow_boot(_: Any) -> None:
        if md.pcpu.cpuid != 2:
            return
        tsleep(curthread().addr("td_wmesg"), PWAIT, "tslow", param.hz // 2)
        G = kern_globals.G
        sx_slock(G.allproc_lock)
        running = sum(1 for p in FOREACH_PROC_IN_SYSTEM() if p.p_comm in PROGRAMS)
        sx_sunlock(G.allproc_lock)
        result("t_programs_while_booting", running)
        result("t_looked")
    res = run(["machine.cpus=4", "run.duration=2", "user.procs_per_cpu=2"],
              [sysinit("test-slow-boot", slow_boot, percpu=True)])
    assert res.exit_status == 0 and res.report["ok"], describe(res)
    k = res.report["kernel"]
    assert k["t_looked"] == 1, k
    assert k.get("t_programs_while_booting", 0) == 0, k
    assert any(p["comm"] in PROGRAMS for p in res.report["procs"]), res.report["procs"]


@pytest.mark.timeout(90)
def test_a_boot_that_never_ends_is_named_by_the_inits_that_wait_for_it(run: Any) -> None:
    """cpu 2's boot sleeps past the run's end. The inits of the other CPUs poll for every
    AP to finish its boot; the liveness detector says so, once for them all, where it
    shows first: before, the only signs were elsewhere (no pagedaemon in ps, a daemon
    never woken)."""
    from helpers import sysinit
    from smp.kernel import param
    from smp.kernel.kern.kern_synch import tsleep
    from smp.kernel.kern.kern_thread import curthread
    from smp.kernel.machine import cpu as md
    from smp.kernel.sys.param import PWAIT

    def stuck_boot(_: Any) -> None:
        if md.pcpu.cpuid == 2:
            tsleep(curthread().addr("td_wmesg"), PWAIT, "tstuck", 60 * param.hz)

    res = run(["machine.cpus=4", "run.duration=2.5", "user.procs_per_cpu=1",
               "debug.liveness_s=1"],
              [sysinit("test-stuck-boot", stuck_boot, percpu=True)])
    boot = [f for f in res.report["findings"] if "('boot')" in f["summary"]]
    assert len(boot) == 1, describe(res)
    f = boot[0]
    assert f["summary"].startswith("never given: thread "), f
    # once for every init that polls (the three, unless one was kept from its tick)
    assert re.search(r"\(init\d\) \(and [12] more threads?\) polls on &kernel#",
                     f["summary"]), f
    assert ".booted_cpus ('boot') for every AP to finish its boot for " in f["summary"], f
    assert "; booted_cpus = 2, mp_naps 3 (booted_cpus last stored @ kern/init_main.py:" \
        in f["summary"], f


@pytest.mark.timeout(60)
def test_a_run_shorter_than_the_boot_still_ends_cleanly(run: Any) -> None:
    res = run(["machine.cpus=4", "run.duration=0.1"])
    assert res.exit_status == 0 and res.report["ok"], describe(res)


@pytest.mark.timeout(90)
def test_default_config_contends_giant_and_sched_lock(run: Any) -> None:
    """The shipped default (4 CPUs, 3 lock-load threads each), only shorter and faster."""
    res = run(["run.duration=2"])
    r = res.report
    assert res.exit_status == 0 and r["ok"] is True, describe(res)
    assert len(r["cpus"]) == 4
    assert r["kernel"]["invariant_violations"] == 0 and r["invariants"] == []
    locks = {lk["name"]: lk for lk in r["locks"]}
    for name in ("Giant", "sched lock"):
        assert name in locks, f"no {name} in the lock report: {sorted(locks)}"
        assert len(locks[name]["cpus_seen"]) >= 2, locks[name]
        assert locks[name]["contested"] > 0, locks[name]
        assert locks[name]["acquires"] >= locks[name]["contested"]
    assert r["kernel"].get("lockload_increments", 0) > 0
    assert sum(c["lock_contested"] for c in r["cpus"]) > 0


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_cli_run_writes_a_run_directory(tmp_path: pathlib.Path) -> None:
    sets = ["machine.cpus=2", *FAST, "run.seed=7"]
    args = [a for s in sets for a in ("--set", s)]
    proc = cli(tmp_path, "run", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^cpu +pid +user", out, re.M), out
    assert re.search(r"^ok: 2\.\d simulated s in [\d.]+ wall s, seed 7 \(end of run\)$", out,
                     re.M), out
    m = re.search(r"^run directory: (.+)$", out, re.M)
    assert m, out
    rdir = pathlib.Path(tmp_path, m.group(1)).resolve()
    assert rdir.parent == (tmp_path / "runs").resolve(), "not under run.dir (cwd/runs)"
    for name in ("config.toml", "report.json", "log.txt"):
        assert (rdir / name).is_file(), f"{name} missing from {rdir}"
    report = json.loads((rdir / "report.json").read_text())
    assert report["ok"] is True and report["seed"] == 7 and len(report["cpus"]) == 2
    assert "machine: 2 CPUs" in (rdir / "log.txt").read_text()
    again = load_config(rdir / "config.toml")
    assert again == load_config(None, sets), "config.toml does not reload to the same config"

    shown = cli(tmp_path, "report", str(rdir))
    assert shown.returncode == 0 and "ok: 2." in shown.stdout


BAD_CONFIGS = [
    pytest.param(["--set", "machine.cpus=0"], "machine.cpus", id="set-out-of-range"),
    pytest.param(["--set", "machine.cpuz=2"], "machine.cpuz", id="set-unknown-key"),
    pytest.param(["--set", "run.duration=soon"], "run.duration", id="set-wrong-type"),
    pytest.param(["bad.toml"], "machine.cpus", id="file-bad-value"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "key"), BAD_CONFIGS)
def test_cli_config_error_exits_2_naming_the_key(tmp_path: pathlib.Path, args: list[str],
                                                 key: str) -> None:
    (tmp_path / "bad.toml").write_text('[machine]\ncpus = "four"\n')
    # a long run if the bad value were accepted: the later --set wins, so it goes first
    proc = cli(tmp_path, "run", "--set", "run.duration=600", *args, timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert key in err, err
    assert len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert err.startswith("smp: ")
    if args[0] == "bad.toml":
        assert "bad.toml" in err
    else:
        assert "--set" in err
    if "cpuz" in key:
        assert "unknown key" in err
    # nothing was started: no run directory, no machine line, no summary
    assert not (tmp_path / "runs").exists()
    assert "machine:" not in proc.stderr and proc.stdout == ""


class Launched:
    """``python -m smp.cli run`` in the background, its output in files."""

    def __init__(self, tmp_path: pathlib.Path, *sets: str) -> None:
        self.rdir = tmp_path / "rd"
        self.out = tmp_path / "stdout.txt"
        self.err = tmp_path / "stderr.txt"
        args = [a for s in sets for a in ("--set", s)]
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen(
                cli_cmd("run", *args, "--run-dir", str(self.rdir)), cwd=tmp_path,
                env=cli_env(), stdout=o, stderr=e, start_new_session=True)
        self.server = 0
        self.cpus: list[int] = []

    def wait_machine(self, timeout: float = 20) -> None:
        """Until the launcher logs the pids of the processes it forked."""
        def pids() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"smp exited early ({self.proc.returncode}): "
                                     f"{self.output()}")
            return parse_pids(read_text(self.rdir / "log.txt"))
        self.server, self.cpus = wait_for(pids, timeout, "the 'cpu pids' log line")

    def wait_running(self, cpu: int, timeout: float = 20) -> None:
        """Until CPU process ``cpu`` runs its kernel. Before the machine starts a CPU
        process only waits on its socket; the kernel's boot and its threads then keep it
        busy, so 0.3 s of CPU time used means the machine has started."""
        p = psutil.Process(self.cpus[cpu])
        wait_for(lambda: sum(p.cpu_times()[:2]) >= 0.3, timeout,
                 f"cpu{cpu} to run its kernel")

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"smp did not exit within {timeout} s: {self.output()}")
        return code, time.monotonic() - t0

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def output(self) -> str:
        return read_text(self.out) + read_text(self.err)

    def report(self) -> dict[str, Any]:
        return json.loads((self.rdir / "report.json").read_text())

    def all_pids(self) -> list[int]:
        return [self.proc.pid, self.server, *self.cpus]


def assert_all_gone(pids: list[int], timeout: float = 5) -> None:
    def gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True
    wait_for(gone, timeout, f"processes {pids} to exit")


@pytest.fixture
def launched(tmp_path: pathlib.Path, track_pids: list[int]) -> Any:
    made: list[Launched] = []

    def start(*sets: str) -> Launched:
        launch = Launched(tmp_path, *sets)
        made.append(launch)
        track_pids.append(launch.proc.pid)
        return launch
    yield start
    for launch in made:                  # a failed test must not leave the machine running
        if launch.proc.poll() is None:
            launch.kill()
        track_pids.extend(launch.all_pids())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "status", "group"), [
    pytest.param(signal.SIGINT, 130, True, id="SIGINT-group"),
    pytest.param(signal.SIGTERM, 143, False, id="SIGTERM-launcher"),
    pytest.param(signal.SIGTERM, 143, True, id="SIGTERM-group"),
])
def test_signal_stops_the_run_within_5s_with_a_partial_report(
        launched: Any, sig: signal.Signals, status: int, group: bool) -> None:
    launch = launched("machine.cpus=2", "run.duration=3600")
    launch.wait_machine()
    launch.wait_running(0)
    if group:
        # as the terminal does for Ctrl-C: the whole process group (the machine's
        # processes ignore SIGINT; the launcher stops them)
        os.killpg(launch.proc.pid, sig)
    else:
        launch.proc.send_signal(sig)
    code, took = launch.wait_exit(10)
    assert code == status, launch.output()
    assert took < 5.0, f"took {took:.1f} s to stop"
    report = launch.report()
    assert report["ok"] is False
    assert report["reason"] == f"stopped by {sig.name}"
    assert 0 < report["duration_sim_s"] < 3600
    assert [c["pid"] for c in report["cpus"]] == launch.cpus
    assert (launch.rdir / "config.toml").is_file()
    assert_all_gone(launch.all_pids())


# smp run, with SIGINT sent to it as it builds its report: after the machine has stopped,
# as a campaign stops its other runs at the first failure
LATE_SIGINT = """
import os, signal, sys
import smp.run.launcher as launcher
from smp.cli import main
build = launcher.build_report
def late(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return build(*args, **kwargs)
launcher.build_report = late
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(60)
def test_a_signal_after_the_machine_stopped_costs_the_run_no_report(
        tmp_path: pathlib.Path) -> None:
    """The signal came after the run's end: the run keeps its report and its own status
    (it used to die of KeyboardInterrupt with no report.json, a failure without a word)."""
    rdir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", LATE_SIGINT, "run", "--set", "machine.cpus=2",
                        "--set", "run.duration=0.5", "--run-dir", str(rdir), "--quiet"],
                       env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=50, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((rdir / "report.json").read_text())
    assert report["ok"] is True and report["reason"] == "end of run"


@pytest.mark.timeout(60)
def test_a_killed_cpu_ends_the_run_within_5s_naming_it(launched: Any) -> None:
    launch = launched("machine.cpus=3", "run.duration=3600")
    launch.wait_machine()
    victim = launch.cpus[2]
    smp = psutil.Process(launch.proc.pid)
    assert victim in {p.pid for p in smp.children()}, "cpu2 is not a child of smp"
    launch.wait_running(2)
    os.kill(victim, signal.SIGKILL)
    code, took = launch.wait_exit(10)
    assert code == 1, launch.output()
    assert took < 5.0, f"took {took:.1f} s to notice"
    needle = f"cpu2 (pid {victim}) died"
    report = launch.report()
    assert needle in report["reason"], report["reason"]
    assert any(needle in p and "SIGKILL" in p for p in report["problems"]), report["problems"]
    assert needle in launch.output()
    assert report["ok"] is False
    assert report["cpus"][0]["reported"] and report["cpus"][1]["reported"]
    assert_all_gone(launch.all_pids())


@pytest.mark.timeout(60)
def test_a_killed_launcher_takes_the_machine_with_it(launched: Any) -> None:
    """No process outlives its run, even when the launcher cannot clean up."""
    launch = launched("machine.cpus=2", "run.duration=3600")
    launch.wait_machine()
    launch.wait_running(1)
    launch.proc.kill()                       # SIGKILL to the launcher alone
    launch.proc.wait(5)
    assert_all_gone([launch.server, *launch.cpus], timeout=5)


@pytest.mark.timeout(60)
def test_a_cpu_dead_before_the_start_is_noticed_within_5s(launched: Any) -> None:
    launch = launched("machine.cpus=2", "run.duration=3600")
    launch.wait_machine()
    os.kill(launch.cpus[1], signal.SIGKILL)
    code, took = launch.wait_exit(30)
    assert code == 1 and took < 5.0, (code, took, launch.output())
    assert f"cpu1 (pid {launch.cpus[1]}) died" in launch.report()["reason"]
