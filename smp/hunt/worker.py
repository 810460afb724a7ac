"""What a Dask worker does for a campaign (``smp.hunt.cluster`` is the campaign's side).

A run is one task, :func:`run_task`: the worker writes the campaign's config (sent as text:
a task's payload is a config going out and a run folder coming back), runs the machine as
its own ``smp run`` subprocess (so the worker's process model does not matter: a machine is
several processes), and returns the exit status and the run directory, packed
(:func:`pack`): whole for a failure, only ``config.toml``, ``report.json`` and ``log.txt``
for a clean run, in both cases at most ``limit`` bytes, the files that matter first. The
worker keeps nothing: the run's folder is removed when the task ends.

:class:`Machines`, a worker plugin installed by :func:`accept` when a campaign accepts the
worker, keeps the machines running on it, so that

* a task the campaign cancels (Ctrl-C, or the client gone) stops its machine: the plugin
  sees the task leave ``executing`` and sends the machine SIGINT (SIGKILL after
  STOP_GRACE_S); a Dask worker cannot interrupt a running task, so without this the
  machine would run on to its end;
* :func:`stop_campaign` (the campaign's first failure) stops the campaign's machines, which
  come back with exit status 130 as they do on one host, and runs of that campaign that
  had not started yet return at once without starting;
* a worker that dies takes its machines with it (``smp.hunt.tether``).

A worker gets runs only once a campaign has probed it (:data:`PROBE_SOURCE`: its smp and
protocol versions) and accepted it (:func:`accept`): accepting gives it the resource
``machines`` (how many machines it runs at once: what the worker declared, else a size
from its cores the campaign chose) and a resource named after the versions (:func:`gate`),
which every task asks for. A worker with another smp never gets that resource, so no
run of this campaign goes there, whatever Dask's scheduler would like.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN = "smp-machines"
MACHINES = "machines"             # the worker resource: machines it runs at once
RUN_DIR = "{run_dir}"             # in a task's arguments: where the worker puts the run
STOP_GRACE_S = 20.0               # a stopped machine that has not exited by then is killed
# A clean run brings back only these; a failing run everything, in this order, while the
# total stays under the limit (the rest is named in cluster.json).
SLIM = ("config.toml", "report.json", "log.txt")
FIRST = ("config.toml", "report.json", "crash.txt", "log.txt", "schedule.smpr")


def versions() -> dict[str, str]:
    """This host's smp and wire protocol versions: a campaign runs only where they are its
    own."""
    import smp
    from smp.hw.protocol import VERSION
    return {"smp": smp.__version__, "protocol": VERSION.decode()}


def gate(v: dict[str, str]) -> str:
    """The worker resource that admits a campaign of versions ``v``."""
    return f"smp-{v['smp']}-{v['protocol']}"


# The probe runs on workers whose smp may differ from ours, or be missing: it is sent as
# source (``smp.hunt.cluster`` compiles it in a module of its own, which cloudpickle
# sends by value), not as a reference to this module, which such a worker may not have.
PROBE_SOURCE = '''
def probe(dask_worker):
    import os, socket, sys
    out = {"host": socket.gethostname(), "cores": os.cpu_count() or 1,
           "nthreads": dask_worker.state.nthreads,
           "resources": dict(dask_worker.state.total_resources),
           "python": sys.version.split()[0], "smp": None, "protocol": None, "error": ""}
    try:
        import smp
        out["smp"] = str(smp.__version__)
        from smp.hw.protocol import VERSION
        out["protocol"] = VERSION.decode()
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out
'''


class _Machine:
    def __init__(self, proc: subprocess.Popen[bytes], campaign: str) -> None:
        self.proc = proc
        self.campaign = campaign

    def stop(self) -> None:
        """SIGINT (``smp run`` stops its machine in order), SIGKILL after STOP_GRACE_S."""
        _signal_group(self.proc, signal.SIGINT)
        t = threading.Timer(STOP_GRACE_S, self._kill)
        t.daemon = True
        t.start()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Machines(WorkerPlugin):
    """The machines running on this worker, by task key (see the module's docstring)."""

    idempotent = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, _Machine] = {}
        self.stopped: set[str] = set()           # campaigns that stopped

    def run(self, key: str, campaign: str, argv: list[str], timeout: float,
            started: Callable[[int], None], run_dir: str) -> int | None:
        """Run ``argv`` (``smp run ...``) for task ``key`` to its end; its exit status, or
        None when the campaign has stopped and it was not started. ``started(pid)`` is
        called once the machine's launcher runs; what it says on standard error ends up
        in ``run_dir`` (``stderr.txt``)."""
        from smp.hunt.stress import child_env, keep_stderr, stderr_file
        cmd = [sys.executable, "-P", "-m", "smp.hunt.tether", str(os.getpid()), "--", *argv]
        with self.lock:
            if campaign in self.stopped:
                return None
            with open(stderr_file(run_dir), "wb") as err:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err, start_new_session=True,
                                     env=machine_env(child_env()))
            self.running[key] = _Machine(p, campaign)
        started(p.pid)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()
            return -9
        finally:
            with self.lock:
                self.running.pop(key, None)
            keep_stderr(run_dir)

    def stop(self, campaign: str) -> int:
        """The campaign stopped: stop its machines, start none of its runs any more."""
        with self.lock:
            self.stopped.add(campaign)
            machines = [m for m in self.running.values() if m.campaign == campaign]
        for m in machines:
            m.stop()
        return len(machines)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # a running task cancelled (or released: its client is gone): stop its machine
        if finish in ("cancelled", "released", "forgotten"):
            with self.lock:
                m = self.running.get(str(key))
            if m is not None:
                m.stop()

    def teardown(self, worker: Any) -> None:
        with self.lock:
            machines = list(self.running.values())
        for m in machines:
            _signal_group(m.proc, signal.SIGKILL)


def machine_env(env: dict[str, str]) -> dict[str, str]:
    """The machine's environment: the worker's, less what Dask's nanny set in it for numeric
    work (``distributed.nanny.pre-spawn-environ``). A machine runs as it would on a host
    without Dask: MALLOC_TRIM_THRESHOLD_=65536, the first of them, costs ``smp run`` some
    15% more CPU (benchmarks/cluster.py)."""
    import dask
    dasks = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {k: v for k, v in env.items() if k not in dasks or v != str(dasks[k])}


async def accept(want: dict[str, str], slots: int, dask_worker: Any) -> int:
    """Make this worker run campaigns of versions ``want``: install :class:`Machines`, and
    give it ``slots`` machines at once unless it declared its own ``machines``. Returns the
    number of machines it runs at once."""
    if versions() != want:
        raise RuntimeError(f"smp {versions()} here, not {want}")
    if PLUGIN not in dask_worker.plugins:
        await dask_worker.plugin_add(plugin=Machines(), name=PLUGIN)
    declared = dask_worker.state.total_resources.get(MACHINES)
    n = int(declared) if declared else slots
    await dask_worker.set_resources(**{MACHINES: n, gate(want): n})
    return n


def stop_campaign(campaign: str, dask_worker: Any) -> int:
    plugin = dask_worker.plugins.get(PLUGIN)
    return plugin.stop(campaign) if plugin is not None else 0


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of a campaign, on this worker (``spec``: ``smp.hunt.cluster.task_spec``)."""
    worker = get_worker()
    if versions() != spec["versions"]:
        raise RuntimeError(f"worker {worker.address} runs {versions()}, the campaign "
                           f"{spec['versions']}")
    plugin = worker.plugins.get(PLUGIN)
    if plugin is None:
        raise RuntimeError(f"worker {worker.address} was not accepted by the campaign")
    tmp = tempfile.mkdtemp(prefix="smp-run-", dir=worker.local_directory)
    try:
        argv = [sys.executable, "-P", "-m", "smp", "run"]
        if spec["config_text"] is not None:
            cfg = os.path.join(tmp, spec["config_name"])
            with open(cfg, "w") as f:
                f.write(spec["config_text"])
            argv.append(cfg)
        rdir = os.path.join(tmp, spec["name"])
        argv += [rdir if a == RUN_DIR else a for a in spec["args"]]
        t = time.monotonic()
        # each start of a run is an event: the campaign counts a second one as a retry
        status = plugin.run(spec["key"], spec["campaign"], argv, spec["timeout"],
                            lambda pid: worker.log_event(spec["topic"], {
                                "index": spec["index"], "worker": worker.address,
                                "pid": pid}), rdir)
        wall = time.monotonic() - t
        out: dict[str, Any] = {"status": status, "wall_s": wall, "worker": worker.address,
                               "host": socket.gethostname(), "run_dir": rdir}
        if status is None:
            return out
        whole = status != 0 or _failed(rdir, spec["strict"])
        out["files"], out["left_out"] = pack(rdir, None if whole else SLIM, spec["limit"])
        return out
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def _failed(rdir: str, strict: bool) -> bool:
    """Does the run show a failure the campaign will report (a new one; any, if strict)?"""
    import json

    from smp.observe.findings import classify
    try:
        with open(os.path.join(rdir, "report.json")) as f:
            fails = classify(json.load(f))
    except (OSError, ValueError):
        return True
    return any(strict or f.known is None for f in fails)


def pack(rdir: str, only: tuple[str, ...] | None, limit: int) -> tuple[bytes, list[str]]:
    """The run directory as a gzipped tar (paths relative to it): the files of ``only``, or
    all; FIRST first; a file that would take the total past ``limit`` bytes (before
    compression) is left out. Returns the archive and the names left out."""
    names = []
    for root, _, files in os.walk(rdir):
        for n in files:
            names.append(os.path.relpath(os.path.join(root, n), rdir))
    names.sort(key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n))
    buf = io.BytesIO()
    left: list[str] = []
    total = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for n in names:
            if only is not None and n not in only:
                left.append(n)
                continue
            size = os.path.getsize(os.path.join(rdir, n))
            if total + size > limit:
                left.append(n)
                continue
            total += size
            tar.add(os.path.join(rdir, n), arcname=n, recursive=False)
    return buf.getvalue(), left


__all__ = ["MACHINES", "PLUGIN", "PROBE_SOURCE", "RUN_DIR", "Machines", "accept", "gate",
           "machine_env", "pack", "run_task", "stop_campaign", "versions"]
