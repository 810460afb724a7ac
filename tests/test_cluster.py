"""Campaigns on a Dask cluster (issue 17), with real LocalClusters of 2 worker processes and
real machines: a failure found on a worker comes back into the campaign's folder and its
rerun and replay commands work here; a clean campaign on a cluster gives what ``--jobs``
gives; a worker killed mid-run loses nothing but time; a worker with another smp gets no
runs; Ctrl-C leaves nothing running anywhere.

``smp stress`` runs as a subprocess in its own session (killed with its group if a test
fails). Where a test needs a hand on the workers (to kill one, to fake its version) it
starts the LocalCluster itself and gives ``smp stress`` its address, as a user of an
existing cluster does; it learns that a run started from the campaign's own Dask events
(each start of a run is one, kept by the scheduler), not by watching processes. Every
process a test starts carries the session's token (helpers.TOKEN), the workers' too, so
that the orphan check (conftest.py) finds any that outlives it.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from helpers import cli_cmd, cli_env, survivors, wait_for

pytestmark = pytest.mark.long

ROOT = pathlib.Path(__file__).resolve().parent.parent
STRESS = str(ROOT / "configs" / "stress.toml")
SMALL = ["--set", "machine.cpus=2", "--set", "user.hog_pages=60"]
FAILING = ["--fail-point", "swapout_procs_p_system"]


class Campaign:
    """``smp stress ARGS`` running in its own session; its standard error read line by line
    as it comes (``expect``), its standard output at the end."""

    def __init__(self, cwd: pathlib.Path, *args: str) -> None:
        self.proc = subprocess.Popen(cli_cmd("stress", *args), cwd=cwd, env=cli_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self.out: list[str] = []
        self.readers = [threading.Thread(target=self._read_err, daemon=True),
                        threading.Thread(target=self._read_out, daemon=True)]
        for t in self.readers:
            t.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.out.append(self.proc.stdout.read())

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line of standard error from now on that matches ``pattern``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: "
                                     f"{''.join(self.err)}") from None
            if line is None:
                raise AssertionError(f"smp stress ended without a line matching "
                                     f"{pattern!r}: {''.join(self.err)}")
            m = re.search(pattern, line)
            if m:
                return m

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"smp stress did not end in {timeout} s: "
                                 f"{''.join(self.err)}") from None
        for t in self.readers:          # the pipes close when the process has ended
            t.join(10)
        return self.proc.returncode, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for t in self.readers:
            t.join(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def campaigns() -> Iterator[Callable[..., Campaign]]:
    """Start ``smp stress`` campaigns; each is killed with its group at the end if still
    running (the autouse no_orphans then checks that nothing of it is left)."""
    started: list[Campaign] = []

    def start(cwd: pathlib.Path, *args: str) -> Campaign:
        c = Campaign(cwd, *args)
        started.append(c)
        return c
    yield start
    for c in started:
        c.kill()


def _stress(campaigns: Callable[..., Campaign], tmp: pathlib.Path, out: str, *args: str,
            timeout: float) -> tuple[int, str, str]:
    return campaigns(tmp, STRESS, *SMALL, *args, "--out", str(tmp / out)).finish(timeout)


def _runs(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads((p / "report.json").read_text())
            for p in sorted(folder.iterdir()) if (p / "report.json").exists()}


# A LocalCluster of 2 worker processes (one machine at a time each) in a process of its
# own, as an existing cluster is: the pytest process starts no Dask process (the orphan
# check would count multiprocessing's resource tracker), it only connects a client. The
# cluster ends when its standard input closes.
CLUSTER = """
import sys
from distributed import LocalCluster
lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                  resources={"machines": 1}, dashboard_address=":0", silence_logs=50)
print(lc.scheduler_address, flush=True)
sys.stdin.read()
lc.close()
"""


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A client of a running LocalCluster (see CLUSTER), closed and reaped at the end."""
    from distributed import Client
    p = subprocess.Popen([sys.executable, "-c", CLUSTER], env=cli_env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         start_new_session=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        address = p.stdout.readline().strip()
        assert address.startswith("tcp://"), address
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=30)
            yield client
        p.stdin.close()
        p.wait(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for f in (p.stdin, p.stdout):
            if f is not None:
                f.close()


def _by_value(source: str, name: str) -> Any:
    """A function compiled in a module of its own, so that Dask sends it by value (the
    workers cannot import this test module)."""
    mod = types.ModuleType(f"smp_test_{name}")
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)  # noqa: S102
    return getattr(mod, name)


@pytest.mark.timeout(180)
def test_a_failure_found_on_a_worker_comes_back_and_replays_here(
        tmp_path: pathlib.Path, campaigns: Callable[..., Campaign]) -> None:
    """Without the P_SYSTEM test the seed's own KASSERT fires on a worker; the run's whole
    folder (crash dump, recorded schedule) lands in the campaign's folder, and the rerun
    and replay commands it prints work on it here."""
    status, out, err = _stress(campaigns, tmp_path, "runs", "--runs", "2", "--duration", "3",
                               "--cluster", "local:2", *FAILING, timeout=150)
    assert status == 1, out + err
    assert re.search(r"cluster tcp://\S+: 2 workers, 2 machines at once", err), err
    assert "dashboard http" in err
    assert "[panic] panic: swapout_procs: a process has no address space" in out
    assert re.search(r"; 0 lost with a worker and retried$", out.strip()), out
    rdir = pathlib.Path(re.search(r"run dir: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert rdir.parent == tmp_path / "runs"
    assert {"config.toml", "report.json", "crash.txt", "log.txt", "schedule.smpr",
            "stats.jsonl", "cluster.json"} <= {p.name for p in rdir.iterdir()}, out + err
    where = json.loads((rdir / "cluster.json").read_text())
    assert where["worker"].startswith("tcp://") and where["left_out"] == []
    assert not pathlib.Path(where["worker_run_dir"]).exists()      # the worker kept nothing
    # the paths it names are this host's
    cfg = (rdir / "config.toml").read_text()
    assert f"# rerun: smp run {rdir / 'config.toml'}" in cfg
    assert f"     rerun:   smp run {rdir / 'config.toml'}" in out
    rec = json.loads((rdir / "report.json").read_text())
    assert rec["schedule"]["record"]["path"] == str(rdir / "schedule.smpr")
    assert rec["config"] == STRESS
    # replay, as printed
    replay = re.search(r"replay:  smp replay (\S+)", out).group(1)  # type: ignore[union-attr]
    assert replay == str(rdir)
    r = subprocess.run(cli_cmd("replay", replay), cwd=tmp_path, env=cli_env(), text=True,
                       capture_output=True, timeout=120, check=False)
    again = json.loads((rdir / "replay" / "report.json").read_text())
    assert again["panic"] is not None, r.stdout + r.stderr
    assert (again["panic"]["message"], again["panic"]["site"]) == \
        (rec["panic"]["message"], rec["panic"]["site"]), r.stdout
    # the halt that follows the panic too (a CPU leaving a halted machine hands its lines
    # to nobody: before, a grant after the record's end could make it "differ")
    assert "replay identical" in r.stdout, r.stdout
    # and the rerun: a machine run here from the config the worker resolved
    rerun = subprocess.run(cli_cmd("run", str(rdir / "config.toml"), "--run-dir",
                                   str(tmp_path / "rerun"), "--quiet"),
                           cwd=tmp_path, env=cli_env(), timeout=120, check=False)
    assert rerun.returncode in (0, 1)
    assert json.loads((tmp_path / "rerun" / "report.json").read_text())["seed"] == rec["seed"]


@pytest.mark.timeout(180)
def test_a_clean_campaign_on_a_cluster_gives_what_jobs_gives(
        tmp_path: pathlib.Path, campaigns: Callable[..., Campaign]) -> None:
    args = ["--runs", "3", "--seed", "5", "--duration", "1", "--set", "machine.cpus=1"]
    s1, out1, err1 = _stress(campaigns, tmp_path, "jobs", *args, "--jobs", "2", timeout=80)
    s2, out2, err2 = _stress(campaigns, tmp_path, "cluster", *args, "--cluster", "local:2",
                             timeout=80)
    assert s1 == s2 == 0, out1 + err1 + out2 + err2
    local, remote = _runs(tmp_path / "jobs"), _runs(tmp_path / "cluster")
    assert list(local) == list(remote) and len(local) == 3         # the same seeds
    for name in local:
        assert (remote[name]["seed"], remote[name]["ok"]) == \
            (local[name]["seed"], local[name]["ok"]), name
    assert out2.strip() == out1.strip() + "; 0 lost with a worker and retried"
    # a clean run brings back what the campaign reads, not its time series and record
    where = json.loads((tmp_path / "cluster" / next(iter(remote)) / "cluster.json")
                       .read_text())
    assert sorted(where["left_out"]) == ["schedule.smpr", "stats.jsonl"]


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_run_loses_only_time(
        tmp_path: pathlib.Path, cluster: Any, campaigns: Callable[..., Campaign]) -> None:
    """SIGKILL to the worker running a machine: the machine dies with it (nothing is
    orphaned), Dask runs the task again, the campaign completes and counts the loss."""
    pids = cluster.run(os.getpid)
    c = campaigns(tmp_path, STRESS, *SMALL, "--runs", "2", "--duration", "2", "--out",
                  str(tmp_path / "runs"), "--cluster", cluster.scheduler.address)
    topic = c.expect(r"on topic ([\w-]+)", 60).group(1)
    first = wait_for(lambda: cluster.get_events(topic), 60, "a run to start")[0][1]
    victim = first["worker"]
    machine = [psutil.Process(first["pid"])]
    try:
        machine += machine[0].children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    os.kill(pids[victim], signal.SIGKILL)
    status, out, err = c.finish(150)
    assert status == 0, out + err
    assert f"cluster: run {first['index']} lost with worker {victim}" in err
    assert "2 runs, 2 without a new failure" in out
    assert out.strip().endswith("; 1 lost with a worker and retried"), out
    def gone(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    # the killed worker's machine died with it
    wait_for(lambda: all(gone(p) for p in machine), 20, "the lost machine's processes to end")
    rdir = next((tmp_path / "runs").glob(f"run{first['index']:04d}-*"))
    assert json.loads((rdir / "cluster.json").read_text())["worker"] != victim


@pytest.mark.timeout(180)
def test_a_worker_with_another_smp_is_refused(
        tmp_path: pathlib.Path, cluster: Any, campaigns: Callable[..., Campaign]) -> None:
    import smp
    from smp.hw.protocol import VERSION
    workers = sorted(cluster.scheduler_info(n_workers=-1)["workers"])
    fake = _by_value("def fake():\n    import smp\n    smp.__version__ = '0.0.9'\n", "fake")
    cluster.run(fake, workers=[workers[1]])
    status, out, err = campaigns(
        tmp_path, STRESS, *SMALL, "--runs", "2", "--duration", "1", "--set",
        "machine.cpus=1", "--out", str(tmp_path / "runs"),
        "--cluster", cluster.scheduler.address).finish(150)
    assert status == 0, out + err
    assert (f"cluster: worker {workers[1]} refused: it runs smp 0.0.9, protocol "
            f"{VERSION.decode()}; this campaign runs smp {smp.__version__}, protocol "
            f"{VERSION.decode()}") in err
    assert "1 workers, 1 machines at once" in err
    ran = {json.loads((p / "cluster.json").read_text())["worker"]
           for p in (tmp_path / "runs").glob("run*")}
    assert ran == {workers[0]}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how, status", [("ctrl-c", 130), ("sigterm", 143)])
def test_ctrl_c_cancels_every_run_and_leaves_nothing_running(
        tmp_path: pathlib.Path, campaigns: Callable[..., Campaign], how: str,
        status: int) -> None:
    """Ctrl-C at the terminal (SIGINT to the whole process group, the LocalCluster's
    workers too), or SIGTERM to the campaign alone (`kill`, `timeout`): the campaign
    exits 130 (143), no machine or worker is left, and no traceback (a signal taken
    inside a Dask client's call made it log one and hang)."""
    from distributed import Client
    c = campaigns(tmp_path, STRESS, *SMALL, "--runs", "4", "--duration", "20", "--out",
                  str(tmp_path / "runs"), "--cluster", "local:2")
    m = c.expect(r"cluster (tcp://\S+):.* on topic ([\w-]+)", 60)
    with Client(m.group(1), timeout=30) as client:
        wait_for(lambda: client.get_events(m.group(2)), 60, "a run to start")
        machines = [p for p in psutil.Process(c.proc.pid).children(recursive=True)
                    if "smp.hunt.tether" in " ".join(p.cmdline()) or
                    " run " in " ".join(p.cmdline())]
    assert machines
    if how == "ctrl-c":
        os.killpg(c.proc.pid, signal.SIGINT)
    else:
        c.proc.send_signal(signal.SIGTERM)
    exited, out, err = c.finish(60)
    assert exited == status, out + err
    assert "interrupted: stopping the campaign's machines" in err
    assert "Traceback" not in err, err
    # the closing lines, as on one host: a run cancelled on its worker was stopped
    sig = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert re.search(rf"^interrupted by {sig}: 0 of 4 runs ended, [1-4] stopped, ", out,
                     re.M), out + err
    wait_for(lambda: not survivors(), 30, "every process of the campaign to end")


@pytest.mark.quick
def test_cluster_specs() -> None:
    from smp.hunt.cluster import ClusterError, default_slots, parse_cluster
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("local") == ("local", os.cpu_count() or 1)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "-x", "nowhere.json"):
        with pytest.raises(ClusterError):
            parse_cluster(bad)
    # undeclared machines: the host's cores shared among its workers, at most the threads
    assert default_slots({"cores": 8, "nthreads": 4}, on_host=1) == 4
    assert default_slots({"cores": 8, "nthreads": 4}, on_host=4) == 2
    assert default_slots({"cores": 2, "nthreads": 1}, on_host=4) == 1


@pytest.mark.quick
def test_a_run_folder_is_packed_what_matters_first_and_comes_back_with_this_hosts_paths(
        tmp_path: pathlib.Path) -> None:
    from smp.hunt.cluster import localize, unpack
    from smp.hunt.worker import SLIM, pack
    w = tmp_path / "worker" / "run0003-s9"
    w.mkdir(parents=True)
    (w / "config.toml").write_text(f'# smp 0.1.0: resolved config of this run (seed 9)\n'
                                   f'# rerun: smp run {w}/config.toml\n'
                                   f'# source: "/w/stress.toml"\n\n[run]\nseed = 9\n')
    (w / "report.json").write_text(json.dumps({"config": "/w/stress.toml", "schedule": {
        "record": {"path": f"{w}/schedule.smpr"}}}))
    (w / "crash.txt").write_text("panic\n")
    (w / "schedule.smpr").write_bytes(b"x" * 3000)
    (w / "stats.jsonl").write_text("{}\n" * 2000)
    data, left = pack(str(w), None, limit=5000)        # the record fits, the stats do not
    assert left == ["stats.jsonl"]
    _, left2 = pack(str(w), SLIM, limit=5000)
    assert sorted(left2) == ["crash.txt", "schedule.smpr", "stats.jsonl"]
    here = tmp_path / "here" / "run0003-s9"
    unpack(data, str(here))
    localize(str(here), str(w), "configs/stress.toml")
    cfg = (here / "config.toml").read_text().splitlines()
    assert cfg[1] == f"# rerun: smp run {here}/config.toml"
    assert cfg[2] == f'# source: "{os.path.abspath("configs/stress.toml")}"'
    assert cfg[4:] == ["[run]", "seed = 9"]
    rep = json.loads((here / "report.json").read_text())
    assert rep["schedule"]["record"]["path"] == f"{here}/schedule.smpr"
    assert (here / "schedule.smpr").read_bytes() == b"x" * 3000


@pytest.mark.quick
def test_a_machine_does_not_inherit_what_the_nanny_set_for_numeric_work() -> None:
    import dask

    from smp.hunt.worker import machine_env
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {
            "MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}}):
        env = machine_env({"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "4",
                           "PYTHONPATH": "/x"})
    # the nanny's value goes; a value the user set otherwise stays, as does the rest
    assert env == {"OMP_NUM_THREADS": "4", "PYTHONPATH": "/x"}


@pytest.mark.timeout(60)
def test_jobs_and_cluster_together_are_a_usage_error(tmp_path: pathlib.Path) -> None:
    r = subprocess.run(cli_cmd("stress", "--jobs", "2", "--cluster", "local:2"),
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 2 and "--jobs or --cluster, not both" in r.stderr
    r = subprocess.run(cli_cmd("stress", "--cluster", "local:0"), cwd=tmp_path,
                       env=cli_env(), capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 2 and "local:N needs a number of workers" in r.stderr

