"""Campaigns on a Dask cluster: ``smp stress ... --cluster local:N | tcp://HOST:PORT``.

We do not schedule runs across hosts ourselves: Dask's distributed scheduler does, on
whatever users already run it on (a laptop's LocalCluster, SSH hosts, Kubernetes, SLURM
through dask-jobqueue). :class:`ClusterRunner` is the campaign's side of it, a
``smp.hunt.stress.Runner``: the campaign's loop (seeds, slots, stopping at the first
failure, the summary) is the one local campaigns use, so a campaign's output does not
depend on where its runs ran. The workers' side is ``smp.hunt.worker``.

* Each run is one task (``smp.hunt.worker.run_task``); what goes out is the campaign's
  config (its text) and ``smp run``'s arguments, what comes back is the exit status and
  the run directory: whole for a failure, the config, report and log for a clean run,
  at most BRING_LIMIT bytes. It lands in the campaign's folder under the name a local run
  gets; its ``config.toml`` and ``report.json`` name paths on this host (the worker's
  are rewritten), and ``cluster.json`` says which worker ran it and what it left out. So
  the rerun and replay commands a failure prints work here.
* Workers are probed when they join (their smp and protocol versions) and accepted or
  refused: a refused worker gets no runs, and the campaign says which worker and which
  versions. Accepting gives a worker its ``machines`` resource, the number of machines
  it runs at once: what it declared (``dask worker --resources machines=N``) or, by
  default, its host's cores shared among that host's workers, at most its threads. The
  campaign has as many runs out as its accepted workers have machines.
* A worker that dies mid-run: Dask runs the task again elsewhere (its own retry, up to
  ``distributed.scheduler.allowed-failures`` times); each start of a run is a Dask event
  (topic ``smp-stress-<campaign>``), so the campaign knows how many runs were lost and
  retried, says so as it happens and counts them in the summary. A lost attempt is not a
  finding. A worker's machines die with it (``smp.hunt.tether``).
* The first failure stops the campaign's machines on every worker (they come back
  stopped, as local ones do); Ctrl-C cancels every future, and each worker stops the
  machine of a cancelled task (``smp.hunt.worker.Machines``): a run that had started
  (its start event came) comes back stopped, without its folder (it stays on the
  worker). A LocalCluster this campaign started is closed at its end.

Security: the address is whatever the user gives; Dask's own TLS configuration
(``distributed.comm.tls.*``, or ``tls://`` addresses) applies, see the README.
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib.util
import json
import logging
import os
import shlex
import signal
import tarfile
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from smp.observe.findings import load_known
from smp.hunt.stress import Campaign, CampaignError, RunOutcome, read_outcome

if importlib.util.find_spec("distributed") is None:      # the extra is not installed
    raise CampaignError("--cluster needs Dask's distributed: pip install 'smp[cluster]' "
                        "(from a clone: pip install '.[cluster]')")

from smp.hunt.worker import (MACHINES, PROBE_SOURCE, RUN_DIR, accept, gate,  # noqa: I001
                             run_task, stop_campaign, versions)

BRING_LIMIT = 128 << 20          # bytes of one run directory brought back, at most
CONNECT_TIMEOUT_S = 30.0         # to reach a scheduler
WORKER_WAIT_S = 120.0            # with no worker at all, the campaign gives up after this


class ClusterError(CampaignError):
    """A cluster that cannot be used (the message says why): exit status 2."""


def parse_cluster(spec: str) -> tuple[str, Any]:
    """``local`` or ``local:N`` (a LocalCluster of N worker processes on this host; one per
    core by default), a path to a scheduler file (``dask scheduler --scheduler-file``,
    dask-jobqueue, dask-mpi), or a scheduler address (``tcp://HOST:PORT``,
    ``tls://...``, or ``HOST:PORT``)."""
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2]
        if not n:
            return "local", os.cpu_count() or 1
        if not n.isdigit() or int(n) < 1:
            raise ClusterError(f"--cluster {spec}: local:N needs a number of workers >= 1")
        return "local", int(n)
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ClusterError(f"--cluster {spec}: no such scheduler file")
        return "file", spec
    if not spec or spec.startswith("-"):
        raise ClusterError(f"--cluster {spec!r}: give local:N or a scheduler address")
    return "address", spec


def _probe() -> Callable[..., dict[str, Any]]:
    """The version probe, compiled in a module of its own so that cloudpickle sends it by
    value: it must run on workers whose smp is not ours (smp.hunt.worker says why)."""
    mod = types.ModuleType("smp_cluster_probe")
    exec(compile(PROBE_SOURCE, "<smp probe>", "exec"), mod.__dict__)  # noqa: S102
    return mod.probe  # type: ignore[no-any-return]


def default_slots(info: dict[str, Any], on_host: int) -> int:
    """Machines at once for a worker that declared none: its host's cores shared among the
    ``on_host`` workers there, at most its threads (each running machine holds one while
    it waits), at least one."""
    return max(1, min(int(info.get("nthreads") or 1), int(info["cores"]) // max(on_host, 1)))


def _local_cluster(n: int) -> Any:
    """A LocalCluster of ``n`` worker processes, one machine at a time each (as ``--jobs
    n``). Its processes are started with SIGINT ignored (an ignored signal is inherited
    across exec): Ctrl-C at the terminal reaches the whole process group, and it is the
    campaign's to handle: it cancels the runs and closes the cluster in order, where
    workers interrupted on their own would die with tracebacks mid-way. (A Ctrl-C in the
    second or two the cluster takes to start is lost; a worker Dask restarts later does
    not ignore it. The machines do not inherit it: ``smp.hunt.tether``.) Its processes log
    only what is critical: what goes wrong with a run comes back with its future, and the
    campaign says it; a worker's heartbeat that meets the scheduler closed under it (a
    Ctrl-C: the campaign closes the cluster while the workers still beat) logged an error
    with a traceback."""
    from distributed import LocalCluster
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               resources={MACHINES: 1}, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    finally:
        signal.signal(signal.SIGINT, old)
    return cluster


class ClusterRunner:
    """A campaign's machines on a Dask cluster (see the module's docstring)."""

    def __init__(self, c: Campaign, say: Callable[[str], None]) -> None:
        from distributed import Client
        assert c.cluster is not None
        kind, arg = parse_cluster(c.cluster)
        self.c = c
        self.say = say
        self.known = load_known()
        self.want = versions()
        self.gate = gate(self.want)
        self.campaign = uuid.uuid4().hex[:12]
        self.topic = f"smp-stress-{self.campaign}"
        self.config_text = None
        if c.config:
            try:
                with open(c.config) as f:
                    self.config_text = f.read()
            except OSError as e:
                raise ClusterError(f"{c.config}: {e.strerror or e}") from None
        self.cluster: Any = None
        try:
            if kind == "local":
                self.cluster = _local_cluster(arg)
                self.client = Client(self.cluster)
            elif kind == "file":
                self.client = Client(scheduler_file=arg, timeout=CONNECT_TIMEOUT_S)
            else:
                self.client = Client(arg, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as e:
            self._close_cluster()
            raise ClusterError(f"--cluster {c.cluster}: cannot reach the scheduler: "
                               f"{e}") from None
        self.address = self.client.scheduler.address
        self.lock = threading.Lock()
        self.starts: dict[int, list[str]] = {}       # run index -> the workers it started on
        self.probed: set[str] = set()
        self.accepted: dict[str, int] = {}            # worker -> machines at once
        self.refused: dict[str, str] = {}
        self.alive: set[str] = set()
        self.futures: dict[str, Any] = {}             # task key -> Dask future
        self.outcomes: list[RunOutcome] = []
        self.stopping = False
        self.idle_since: float | None = None
        self.client.subscribe_topic(self.topic, self._on_start)
        dash = (self.client.scheduler_info().get("services") or {}).get("dashboard")
        link = (self.cluster or self.client).dashboard_link if dash else None
        self.tick()
        say(f"cluster {self.address}: {len(self.accepted)} workers, {self.slots()} "
            f"machines at once; each run's start is an event on topic {self.topic}"
            + (f"; dashboard {link}" if link else ""))

    # -- workers -------------------------------------------------------------------------
    def tick(self) -> None:
        """Probe workers that joined since the last tick; accept or refuse them."""
        workers = self._workers()
        new = sorted(set(workers) - self.probed)
        if new and not self.stopping:
            self.probed.update(new)
            infos = self.client.run(_probe(), workers=new, on_error="return")
            # workers per host, as the scheduler knows them: they share its cores
            hosts = collections.Counter(str(d.get("host")) for d in workers.values())
            for w in new:
                self._judge(w, infos.get(w), hosts[str(workers[w].get("host"))])
        self.alive = set(workers) & set(self.accepted)

    def _workers(self) -> dict[str, Any]:
        """The scheduler's workers, all of them (distributed before 2025 lists them all
        anyway, and has no ``n_workers``)."""
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:
            info = self.client.scheduler_info()
        return dict(info.get("workers") or {})

    def _judge(self, w: str, info: Any, on_host: int) -> None:
        if not isinstance(info, dict):               # gone already, or the probe failed
            self.refused[w] = f"probe failed: {info!r}"
            return
        theirs = {"smp": info["smp"], "protocol": info["protocol"]}
        if theirs != self.want:
            what = (f"smp {info['smp']}, protocol {info['protocol']}" if info["smp"]
                    else f"no smp ({info['error']})")
            self.refused[w] = what
            self.say(f"cluster: worker {w} refused: it runs {what}; this campaign runs "
                     f"smp {self.want['smp']}, protocol {self.want['protocol']}")
            return
        slots = default_slots(info, on_host)
        got = self.client.run(accept, self.want, slots, workers=[w], on_error="return")
        n = got.get(w)
        if isinstance(n, int):
            self.accepted[w] = n
        else:
            self.refused[w] = f"not accepted: {n!r}"

    def slots(self) -> int:
        return sum(self.accepted[w] for w in self.alive)

    def idle(self, timeout: float) -> None:
        """No accepted worker: if every worker there is was refused, give up; if there are
        none (all lost, or a cluster still growing), wait at most ``timeout`` for one to
        join, and give up after WORKER_WAIT_S without any."""
        live = self._workers()
        if live and all(w in self.refused for w in live):
            refused = "; ".join(f"{w} runs {self.refused[w]}" for w in sorted(live))
            raise ClusterError(f"cluster {self.address}: no worker runs smp "
                               f"{self.want['smp']}, protocol {self.want['protocol']} "
                               f"({refused})")
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
            self.say(f"cluster: no worker to run on, waiting up to {WORKER_WAIT_S:g} s for "
                     f"one")
        elif now - self.idle_since > WORKER_WAIT_S:
            raise ClusterError(f"cluster {self.address}: no worker to run on for "
                               f"{WORKER_WAIT_S:g} s")
        try:
            self.client.wait_for_workers(len(self.probed - set(self.refused)) + 1,
                                         timeout=timeout)
        except TimeoutError:
            pass
        self.tick()
        if self.slots():
            self.idle_since = None

    # -- runs ----------------------------------------------------------------------------
    def task_spec(self, i: int, seed: int, rdir: str) -> dict[str, Any]:
        return {"campaign": self.campaign, "topic": self.topic, "index": i,
                "key": f"smp-{self.campaign}-run{i:04d}", "name": os.path.basename(rdir),
                "versions": self.want, "config_text": self.config_text,
                "config_name": os.path.basename(self.c.config or "config.toml"),
                "args": self.c.run_args(seed, RUN_DIR), "timeout": self.c.run_timeout,
                "strict": self.c.strict, "limit": BRING_LIMIT}

    def start(self, i: int, seed: int, rdir: str) -> concurrent.futures.Future[
            RunOutcome | None]:
        spec = self.task_spec(i, seed, rdir)
        done: concurrent.futures.Future[RunOutcome | None] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()
        fut = self.client.submit(run_task, spec, key=spec["key"], pure=False,
                                 resources={MACHINES: 1, self.gate: 1})
        with self.lock:
            self.futures[spec["key"]] = fut
        fut.add_done_callback(lambda f: self._finished(f, done, i, seed, rdir))
        return done

    def _finished(self, fut: Any, done: concurrent.futures.Future[RunOutcome | None],
                  i: int, seed: int, rdir: str) -> None:
        """A task ended (in Dask's callback thread): its outcome, its folder brought back."""
        try:
            if fut.status == "cancelled":
                done.set_result(self._cancelled(i, seed, rdir))
            elif fut.status == "error":
                done.set_result(self._lost_or_broken(i, seed, rdir, fut.exception()))
            else:
                done.set_result(self._bring_back(i, seed, rdir, fut.result()))
        except BaseException as e:       # noqa: BLE001  (handed to the campaign's loop)
            if not done.done():
                done.set_exception(e)
        finally:
            with self.lock:
                self.futures.pop(fut.key, None)
            fut.release()

    def _cancelled(self, i: int, seed: int, rdir: str) -> RunOutcome | None:
        """Ctrl-C cancelled the task: stopped if it started on a worker (exit status
        unknown: -1), None (not an outcome) if it never started."""
        with self.lock:
            starts = len(self.starts.get(i, []))
        if not starts:
            return None
        return RunOutcome(i, seed, rdir, -1, 0.0, [], stopped=True, attempts=starts)

    def _lost_or_broken(self, i: int, seed: int, rdir: str, exc: BaseException) -> RunOutcome:
        from distributed import KilledWorker
        if isinstance(exc, KilledWorker):
            why = (f"lost with its worker {len(self.starts.get(i, [])) or 'several'} times "
                   f"(Dask gives up after distributed.scheduler.allowed-failures): rerun "
                   f"it on one host with smp run --set run.seed={seed}")
        else:
            why = f"the cluster could not run it: {type(exc).__name__}: {exc}"
        return RunOutcome(i, seed, rdir, -1, 0.0, [], why,
                          attempts=max(len(self.starts.get(i, [])), 1))

    def _bring_back(self, i: int, seed: int, rdir: str, r: dict[str, Any]) -> RunOutcome | None:
        """The run's folder, from the task's result, into the campaign's folder."""
        if r["status"] is None:                  # the campaign stopped before it started
            return None
        unpack(r["files"], rdir)
        localize(rdir, r["run_dir"], self.c.config)
        with open(os.path.join(rdir, "cluster.json"), "w") as f:
            json.dump({"worker": r["worker"], "host": r["host"],
                       "worker_run_dir": r["run_dir"], "left_out": r["left_out"],
                       "wall_s": round(r["wall_s"], 3)}, f, indent=1)
        out = read_outcome(i, seed, rdir, r["status"], r["wall_s"], self.stopping, self.known)
        out.attempts = max(len(self.starts.get(i, [])), 1)
        with self.lock:
            self.outcomes.append(out)
        return out

    def _on_start(self, event: Any) -> None:
        """A run started on a worker (a Dask event). A second start is a retry: the worker
        of the first was lost."""
        _, msg = event
        i, w = int(msg["index"]), str(msg["worker"])
        with self.lock:
            before = self.starts.setdefault(i, [])
            before.append(w)
        if len(before) > 1:
            self.say(f"cluster: run {i} lost with worker {before[-2]}; Dask runs it again "
                     f"on {w}")

    # -- stopping ------------------------------------------------------------------------
    def stop(self) -> None:
        """The first failure: stop the campaign's machines on every worker."""
        self.stopping = True
        self.client.run(stop_campaign, self.campaign, workers=sorted(self.accepted),
                        on_error="return")

    def interrupt(self) -> None:
        """Ctrl-C: cancel every future; each worker stops the machine of a cancelled task."""
        self.stopping = True
        with self.lock:
            futs = list(self.futures.values())
        try:
            self.client.cancel(futs, force=True)
            self.client.run(stop_campaign, self.campaign, workers=sorted(self.accepted),
                            on_error="return")
        except Exception:              # noqa: BLE001, S110  (closing anyway)
            pass

    def close(self) -> None:
        """Count the retries exactly (every start event the scheduler kept), then let go of
        the cluster; a LocalCluster of ours is shut down."""
        try:
            if self.client.status == "running":
                starts: dict[int, int] = {}
                for _, msg in self.client.get_events(self.topic):
                    starts[int(msg["index"])] = starts.get(int(msg["index"]), 0) + 1
                with self.lock:
                    for o in self.outcomes:
                        o.attempts = max(o.attempts, starts.get(o.index, 1))
                self.client.unsubscribe_topic(self.topic)
        finally:
            self.client.close()
            self._close_cluster()

    def _close_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def unpack(data: bytes, rdir: str) -> None:
    """A packed run directory (``smp.hunt.worker.pack``) into ``rdir``; members that would
    land outside it, links and devices are refused (tarfile's ``data`` filter)."""
    import io
    os.makedirs(rdir, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(rdir, filter="data")
            return
        # PORT: Python 3.11.0 to 3.11.3 have no extraction filters: the same rules, here
        for m in tar.getmembers():
            name = os.path.normpath(m.name)
            if not m.isfile() or os.path.isabs(name) or name.startswith(".."):
                raise tarfile.TarError(f"refused member {m.name!r} of a run folder")
        tar.extractall(rdir)


def localize(rdir: str, worker_dir: str, config: str | None) -> None:
    """Paths of the worker in a brought-back run directory made this host's: the rerun
    line and the source of ``config.toml`` (comments: a replay's check of the config does
    not read them), the config and the record named in ``report.json``."""
    source = os.path.abspath(config) if config else None
    path = os.path.join(rdir, "config.toml")
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().split("\n")
        for k, line in enumerate(lines):
            if line.startswith("# rerun: smp run "):
                lines[k] = f"# rerun: smp run {shlex.quote(path)}"
            elif line.startswith("# source: ") and source:
                lines[k] = f"# source: {json.dumps(source)}"
            elif not line.startswith("#"):
                break
        with open(path, "w") as f:
            f.write("\n".join(lines))
    path = os.path.join(rdir, "report.json")
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return
    if source:
        rep["config"] = source
    rec = (rep.get("schedule") or {}).get("record") or {}
    if isinstance(rec.get("path"), str) and rec["path"].startswith(worker_dir):
        rec["path"] = rdir + rec["path"][len(worker_dir):]
    with open(path, "w") as f:
        json.dump(rep, f, indent=1)


__all__ = ["BRING_LIMIT", "ClusterError", "ClusterRunner", "default_slots", "localize",
           "parse_cluster", "unpack"]
