"""CPUs on other hosts: ``smp run --listen`` with ``smp cpu --join`` (smp/run/remote.py).

* on the loopback, one CPU started by the launcher and one that joins make a 2-CPU
  machine that runs to completion;
* a joined CPU that dies ends the run within seconds, named;
* listening on a non-loopback address without CURVE keys is refused (exit 2) before
  anything starts;
* across two network namespaces joined by a veth pair (10.99.0.1 and 10.99.0.2, which
  exist only inside the test's own namespaces), a CPU with the right CURVE keys joins and
  the run completes; a CPU with a key the server does not accept cannot join: it exits
  saying that its key was refused, and the run ends naming the missing CPU. Skipped where
  the host cannot create namespaces (not root, no CAP_NET_ADMIN, no iproute2).

Every process is started with ``helpers.cli_env()`` (so the orphan check finds it) and
is reaped in a ``finally``; the namespaces are deleted in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Iterator, Sequence

import pytest

from helpers import cli_cmd, cli_env, wait_for

pytestmark = [pytest.mark.long, pytest.mark.timeout(90)]

RUN = ["--quiet", "--set", "machine.cpus=2", "--set", "run.duration=1",
       "--set", "user.procs_per_cpu=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """The processes a test starts; :meth:`reap` stops whatever is left."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
        p = subprocess.Popen([*prefix, *argv], env=cli_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.reap()


def _finish(p: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _report(run_dir: pathlib.Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def test_loopback_join_completes(tmp_path: pathlib.Path, procs: Procs) -> None:
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    run = procs.start(cli_cmd("run", *RUN, "--run-dir", str(tmp_path / "run"),
                              "--listen", endpoint, "--local-cpus", "1",
                              "--join-timeout", "30"))
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "1", "--timeout", "30"))
    status, err = _finish(run, 60)
    cpu_status, cpu_err = _finish(cpu, 15)
    assert status == 0, f"run: exit {status}: {err}\ncpu: {cpu_err}"
    assert cpu_status == 0, f"cpu: exit {cpu_status}: {cpu_err}"
    report = _report(tmp_path / "run")
    assert report["ok"], report["problems"]
    assert [c["id"] for c in report["cpus"]] == [0, 1]
    joined = report["cpus"][1]
    assert joined["pid"] == cpu.pid and sum(joined["ticks"].values()) > 0, joined


def test_a_cpu_without_keys_is_told_the_server_wants_them(tmp_path: pathlib.Path,
                                                          procs: Procs) -> None:
    """Against a server with CURVE keys, a CPU that gave no --key-dir was asked whether
    server.key was wrong; it is told to pass --key-dir."""
    keys = tmp_path / "keys"
    for extra in ([], ["--cpus", "1"]):
        r = subprocess.run(cli_cmd("keys", str(keys), *extra), env=cli_env(),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    run = procs.start(cli_cmd("run", *RUN, "--run-dir", str(tmp_path / "run"), "--listen",
                              endpoint, "--local-cpus", "1", "--key-dir", str(keys),
                              "--join-timeout", "20"))
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "1", "--timeout", "15"))
    cpu_status, cpu_err = _finish(cpu, 30)
    assert cpu_status == 1, cpu_err
    assert "the server wants CURVE keys, which this CPU has none of (--key-dir DIR" in \
        cpu_err, cpu_err
    run.send_signal(signal.SIGINT)                  # no need to wait for cpu 1's hello
    status, err = _finish(run, 40)
    assert status == 130, err


def test_a_refused_hello_is_counted_when_the_machine_never_starts(
        tmp_path: pathlib.Path, procs: Procs) -> None:
    """The report of a machine that never started (a CPU refused, then Ctrl-C) keeps what
    the server counted meanwhile: the refused HELLO, where the README says."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    run = procs.start(cli_cmd("run", *RUN, "--run-dir", str(tmp_path / "run"), "--listen",
                              endpoint, "--local-cpus", "1", "--join-timeout", "60"))
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "100", "--timeout", "30"))
    cpu_status, cpu_err = _finish(cpu, 40)
    assert cpu_status == 1 and "cpu id 100 out of range" in cpu_err, cpu_err
    run.send_signal(signal.SIGINT)
    status, err = _finish(run, 40)
    assert status == 130, err
    report = _report(tmp_path / "run")
    assert "before the machine started" in report["reason"], report["reason"]
    assert report["server"]["rejected"].get("hello") == 1, report["server"]
    # and says nothing of the run it never had (a final report missing from each CPU)
    assert not report["problems"], report["problems"]


def test_cpus_that_waited_long_for_a_late_join_are_not_silent(tmp_path: pathlib.Path,
                                                               procs: Procs) -> None:
    """cpu 1 joins; cpu 2 joins ``wait_s`` later, more than the watchdog's bound. cpu 1 sent
    nothing meanwhile (it waits for the start), which is no lack of progress: the run
    ends ok. Before, the watchdog's first look after the start found cpu 1 (or cpu 0)
    silent since its hello, and the launcher killed it ("cpu1 (remote) unresponsive")."""
    watchdog_s, wait_s = 5.0, 6.0          # (the default watchdog)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    rdir = tmp_path / "run"
    run = procs.start(cli_cmd("run", *RUN, "--set", "machine.cpus=3", "--set",
                              f"debug.watchdog_s={watchdog_s}", "--run-dir", str(rdir),
                              "--listen", endpoint, "--local-cpus", "1",
                              "--join-timeout", "60"))

    def join(cpu: int) -> subprocess.Popen[str]:
        return procs.start(cli_cmd("cpu", "--join", endpoint, "--id", str(cpu),
                                   "--timeout", "60"))

    cpu1 = join(1)
    assert cpu1.stderr is not None
    line = cpu1.stderr.readline()                 # said once its HELLO was taken
    assert "cpu1" in line and "joined" in line, line
    time.sleep(wait_s)                            # the late join itself, not a hope
    cpu2 = join(2)
    status, err = _finish(run, 60)
    report = _report(rdir)
    assert status == 0, f"run: exit {status}: {report['reason']} {err}"
    for p in (cpu1, cpu2):
        assert _finish(p, 15)[0] == 0
    assert report["ok"] and not [f for f in report["findings"] if f["detector"] == "watchdog"], \
        report["reason"]


def test_remote_cpu_death_ends_run(tmp_path: pathlib.Path, procs: Procs) -> None:
    """A joined CPU has no parent-death link to the launcher; when it dies, the server's
    silence check (PEER_LOST_S) still ends the run, naming it."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    rdir = tmp_path / "run"
    run = procs.start(cli_cmd("run", *RUN, "--set", "run.duration=600", "--run-dir",
                              str(rdir), "--listen", endpoint, "--local-cpus", "1",
                              "--join-timeout", "30"))
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "1", "--timeout", "30"))
    wait_for(lambda: (rdir / "live.json").exists() or run.poll() is not None, 40,
             "the machine to start")
    cpu.kill()
    t = time.monotonic()
    status, err = _finish(run, 30)
    assert status == 1, err
    assert time.monotonic() - t < 10
    report = _report(rdir)
    assert "cpu1 (remote) unresponsive" in report["reason"], report["reason"]


@pytest.mark.parametrize("addr", ["0.0.0.0", "10.99.0.1", "*"])
def test_non_loopback_listen_needs_keys(tmp_path: pathlib.Path, procs: Procs,
                                        addr: str) -> None:
    p = procs.start(cli_cmd("run", "--quiet", "--run-dir", str(tmp_path / "run"),
                            "--listen", f"tcp://{addr}:{_free_port()}"))
    status, err = _finish(p, 30)
    assert status == 2, err
    assert "non-loopback" in err and "--key-dir" in err, err
    assert not (tmp_path / "run").exists()           # nothing was started


# -- two network namespaces ------------------------------------------------------------
NS_ADDR = {"srv": "10.99.0.1", "cpu": "10.99.0.2"}


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[dict[str, str]]:
    """Two namespaces joined by a veth pair; yields {"srv": name, "cpu": name}."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) on this host")
    tag = f"{os.getpid() % 100000}"
    names = {"srv": f"smp-srv-{tag}", "cpu": f"smp-cpu-{tag}"}
    veth = {"srv": f"smps{tag}", "cpu": f"smpc{tag}"}
    made: list[str] = []
    try:
        for role in ("srv", "cpu"):
            r = _ip("netns", "add", names[role])
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
            made.append(names[role])
        steps = [["link", "add", veth["srv"], "type", "veth", "peer", "name", veth["cpu"]]]
        for role in ("srv", "cpu"):
            ns = names[role]
            steps += [["link", "set", veth[role], "netns", ns],
                      ["-n", ns, "addr", "add", f"{NS_ADDR[role]}/24", "dev", veth[role]],
                      ["-n", ns, "link", "set", veth[role], "up"],
                      ["-n", ns, "link", "set", "lo", "up"]]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (ip {' '.join(step)}): "
                            f"{r.stderr.strip()}")
        yield names
    finally:
        for ns in made:              # deleting a namespace deletes its end of the veth
            _ip("netns", "del", ns)


def test_curve_join_across_namespaces(tmp_path: pathlib.Path, procs: Procs,
                                      netns: dict[str, str]) -> None:
    keys, wrong = tmp_path / "keys", tmp_path / "wrong"
    for d in (keys, wrong):
        for extra in ([], ["--cpus", "1"]):          # the server's pair, then cpu 1's
            r = subprocess.run(cli_cmd("keys", str(d), *extra), env=cli_env(),
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
    # the wrong CPU knows the server's public key but has a key pair it never authorised
    shutil.copy(keys / "server.key", wrong / "server.key")
    endpoint = f"tcp://{NS_ADDR['srv']}:{_free_port()}"
    in_srv = ["ip", "netns", "exec", netns["srv"]]
    in_cpu = ["ip", "netns", "exec", netns["cpu"]]

    # the right keys: the CPU in the other namespace joins and the run completes
    run = procs.start(cli_cmd("run", *RUN, "--run-dir", str(tmp_path / "ok"),
                              "--listen", endpoint, "--local-cpus", "1",
                              "--key-dir", str(keys), "--join-timeout", "30"), in_srv)
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "1", "--key-dir",
                              str(keys), "--timeout", "30"), in_cpu)
    status, err = _finish(run, 60)
    cpu_status, cpu_err = _finish(cpu, 15)
    assert status == 0 and cpu_status == 0, f"run: {status} {err}\ncpu: {cpu_status} {cpu_err}"
    report = _report(tmp_path / "ok")
    assert report["ok"] and [c["id"] for c in report["cpus"]] == [0, 1], report["problems"]

    # a key the server does not accept: refused at the handshake, the run names cpu 1
    run = procs.start(cli_cmd("run", *RUN, "--run-dir", str(tmp_path / "refused"),
                              "--listen", endpoint, "--local-cpus", "1",
                              "--key-dir", str(keys), "--join-timeout", "5"), in_srv)
    cpu = procs.start(cli_cmd("cpu", "--join", endpoint, "--id", "1", "--key-dir",
                              str(wrong), "--timeout", "20"), in_cpu)
    cpu_status, cpu_err = _finish(cpu, 30)
    status, err = _finish(run, 40)
    assert cpu_status == 1 and "refused this CPU's key" in cpu_err, cpu_err
    assert status == 1, err
    report = _report(tmp_path / "refused")
    assert not report["ok"]
    assert "cpu 1 did not say hello" in report["reason"], report["reason"]


@pytest.mark.quick
@pytest.mark.parametrize("listen, join", [
    ("tcp://0.0.0.0:5555", "tcp://HOST:5555"), ("tcp://*:5555", "tcp://HOST:5555"),
    ("tcp://[::]:5555", "tcp://HOST:5555"), ("tcp://10.0.0.7:5555", "tcp://10.0.0.7:5555")])
def test_the_join_hint_never_names_a_wildcard_address(listen: str, join: str) -> None:
    """`smp run --listen tcp://0.0.0.0:5555` told the other hosts to join
    tcp://0.0.0.0:5555, which is no address to reach this host by."""
    from smp.run.remote import ListenSpec
    assert ListenSpec(listen, 1, None, 30.0).join_endpoint == join
