"""What the monitoring tools share: finding a live run, reading its stats stream, and
turning cumulative samples into per-interval figures.

The stream (docs/DESIGN.md, "Processes"): every CPU keeps its counters locally and posts a
sample every ``run.stats_interval`` wall seconds; the server republishes those on a PUB
socket (topic ``b"cpu"``) beside its own sample (topic ``b"server"``: locks, the
LOCK_PROFILING rows, memory, the kernel's page counts). Nobody asks a CPU for anything.
While a run is alive its directory holds ``live.json`` with the PUB endpoint and the pids;
``stats.jsonl`` is the same stream written to disk by the launcher.

Samples are cumulative, so every rate here is the difference of two samples of the same
CPU divided by the *simulated* time between them (the machine's own time, as ``cp_time``
ticks are). One figure is in host time because it is the host's: the mean round trip of a
memory request (``bus_wait_s / bus_calls``, the transport's latency). LOCK_PROFILING's
columns are microseconds of the lock table's clock: simulated time in virtual time (the
times of the requests that took and released the locks), host time in wall time.

Consumers: ``smp top`` (smp/observe/top.py), the progress line of ``smp run``
(smp/observe/progress.py), the Prometheus exporter (smp/observe/metrics.py) and the charts
(smp/observe/plot.py).
"""

from __future__ import annotations

import glob
import os
import time
import tomllib
from typing import Any, Iterator

import psutil
import zmq

from smp.hw.cpu import MODES
from smp.hw.protocol import unpack
from smp.observe.live import live_pids_alive, process_alive, read_live_json

# Order in which modes stack (user work at the bottom, idle on top), as top(1) lists them.
MODE_ORDER = ("user", "nice", "sys", "intr", "spin", "idle")
BUSY_MODES = ("user", "nice", "sys", "intr", "spin")
# LOCK_PROFILING's columns (FreeBSD debug.lock.prof.stats), in its order.
PROFILE_COLUMNS = ("max", "wait_max", "total", "wait_total", "count", "avg", "wait_avg",
                   "cnt_hold", "cnt_lock", "name")

assert set(MODE_ORDER) == set(MODES)


class MonitorError(Exception):
    """A monitor of a run cannot start (the message, for people, says why): the run
    stops with it as its reason."""


class NoLiveRun(Exception):
    """No running machine where one was looked for (the message says where)."""


def read_live(run_dir: str) -> dict[str, Any] | None:
    """``run_dir/live.json`` if the run is alive, else None: a launcher killed with
    SIGKILL leaves its live.json behind, so the pids it names are checked (the launcher,
    the same process as wrote it, and its server: smp/observe/live.py)."""
    info = read_live_json(run_dir)
    if info is None or not live_pids_alive(info):
        return None
    info.update(run_config(run_dir))
    return info


def run_config(run_dir: str) -> dict[str, Any]:
    """What the monitors want from the run's resolved config.toml (empty if unreadable)."""
    try:
        with open(os.path.join(run_dir, "config.toml"), "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    run, machine = cfg.get("run") or {}, cfg.get("machine") or {}
    return {"duration": run.get("duration"), "speed": machine.get("speed"),
            "stats_interval": run.get("stats_interval"), "hz": machine.get("hz"),
            "cpus": machine.get("cpus")}


def _not_running(run_dir: str) -> str:
    """Why ``run_dir`` is no running machine, and what to look at instead."""
    if not os.path.exists(run_dir):
        return "no such directory"
    if not os.path.isdir(run_dir):
        return "is not a directory (a run directory is)"
    info = read_live_json(run_dir)
    if os.path.exists(os.path.join(run_dir, "report.json")):
        return f"the run has ended; `smp report {run_dir}` shows it"
    if info is None:
        return "not a running machine (it has no live.json)"
    if process_alive(info.get("launcher_pid"), info.get("launcher_started")):
        return "its server is gone: the run is ending (its report will follow)"
    return "its launcher is gone (killed: the run ended without a report)"


def find_live_run(run_dir: str | None, base: str = "runs") -> tuple[str, dict[str, Any]]:
    """The run to attach to: ``run_dir``, or the newest live run under ``base``."""
    if run_dir is not None:
        info = read_live(run_dir)
        if info is None:
            raise NoLiveRun(f"{run_dir}: {_not_running(run_dir)}")
        return run_dir, info
    found = []
    for path in glob.glob(os.path.join(base, "*", "live.json")):
        try:
            found.append((os.path.getmtime(path), os.path.dirname(path)))
        except OSError:
            continue
    for _, d in sorted(found, reverse=True):
        info = read_live(d)
        if info is not None:
            return d, info
    raise NoLiveRun(f"no running machine under {base}/ (start one with `smp run`, "
                    f"or name its run directory)")


class Stream:
    """A SUB socket on a run's stats stream; yields ``(topic, sample)`` pairs."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)

    def poll(self, timeout_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Wait up to ``timeout_s`` for the first sample, then yield all that are queued."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                continue
            try:
                rec = unpack(parts[1])
            except Exception:  # noqa: BLE001 - a bad frame is skipped, not fatal
                continue
            if isinstance(rec, dict):
                yield parts[0].decode(errors="replace"), rec

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- per-interval figures ------------------------------------------------------------------
def _d(cur: dict[str, Any], prev: dict[str, Any], key: str) -> float:
    return float(cur.get(key, 0) or 0) - float(prev.get(key, 0) or 0)


def cpu_rates(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """What one CPU did between two of its samples.

    ``pct``: share of the interval's ticks per mode (cp_time style, adds up to 100);
    rates per simulated second; ``spin_ms``/``sleep_ms``: milliseconds of wait per
    simulated second (sleep waits of several threads add up, so it can pass 1000);
    ``rtt_us``: mean host round trip of the CPU's waiting memory/bus requests."""
    dsim = _d(cur, prev, "sim")
    ticks_now, ticks_then = cur.get("ticks") or {}, prev.get("ticks") or {}
    dticks = {m: max(int(ticks_now.get(m, 0)) - int(ticks_then.get(m, 0)), 0)
              for m in MODE_ORDER}
    total = sum(dticks.values())
    pct = {m: (100.0 * dticks[m] / total if total else 0.0) for m in MODE_ORDER}

    def rate(key: str) -> float:
        return _d(cur, prev, key) / dsim if dsim > 0 else 0.0

    calls = _d(cur, prev, "bus_calls")
    return {
        "cpu": cur.get("cpu"), "pid": cur.get("pid"), "sim": cur.get("sim", 0.0),
        "interval_sim_s": round(dsim, 4), "interval_wall_s": round(_d(cur, prev, "wall"), 4),
        "ticks": dticks, "pct": pct, "busy": sum(pct[m] for m in BUSY_MODES),
        "ctxsw_vol_s": rate("ctxsw_vol"), "ctxsw_invol_s": rate("ctxsw_invol"),
        "locks_s": rate("lock_acquires"), "contested_s": rate("lock_contested"),
        "spin_ms": 1000.0 * rate("spin_wait_s"), "sleep_ms": 1000.0 * rate("sleep_wait_s"),
        "mem_s": rate("mem_ops"),
        "rtt_us": 1e6 * _d(cur, prev, "bus_wait_s") / calls if calls > 0 else 0.0,
        "ipis_sent_s": rate("ipis_sent"), "ipis_received_s": rate("ipis_received"),
    }


def lock_name(row: dict[str, Any]) -> str:
    """LOCK_PROFILING's name column: the lock, then where it was acquired."""
    site = str(row.get("site", ""))
    return f"{row.get('name', '?')} @ {site.rsplit('/', 1)[-1]}" if site else \
        str(row.get("name", "?"))


def top_locks(server: dict[str, Any] | None, sort: str = "wait_total",
              n: int = 10) -> list[dict[str, Any]]:
    """The most contended acquisition sites (LOCK_PROFILING rows, cumulative)."""
    rows = list((server or {}).get("lock_profile") or [])
    rows.sort(key=lambda r: -float(r.get(sort, 0) or 0))
    return [{**{c: r.get(c, 0) for c in PROFILE_COLUMNS[:-1]}, "name": lock_name(r),
             "lock": r.get("name"), "site": r.get("site")} for r in rows[:n]]


class HostProcs:
    """The host side of each CPU: its OS process's CPU % and RSS (psutil, not the bus)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}

    def get(self, pid: int | None) -> dict[str, Any]:
        if not pid:
            return {"pid": None, "cpu_percent": None, "rss": None}
        p = self.procs.get(pid)
        try:
            if p is None:
                p = self.procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)              # the first call only starts the count
            with p.oneshot():
                return {"pid": pid, "cpu_percent": p.cpu_percent(None),
                        "rss": p.memory_info().rss}
        except psutil.Error:
            self.procs.pop(pid, None)
            return {"pid": pid, "cpu_percent": None, "rss": None}


class MachineView:
    """The latest state of a machine, built from its stream.

    ``feed`` takes samples as they come; ``mark`` starts a new display interval (the rates
    of :meth:`cpus` are over the samples between the last two marks, as top(1) does between
    refreshes)."""

    def __init__(self, live: dict[str, Any] | None = None) -> None:
        self.live = live or {}
        self.latest: dict[int, dict[str, Any]] = {}
        self.base: dict[int, dict[str, Any]] = {}
        self.shown: dict[int, dict[str, Any]] = {}
        self.rates: dict[int, dict[str, Any]] = {}
        self.counts: dict[int, int] = {}
        self.server: dict[str, Any] | None = None
        self.last_heard = time.monotonic()
        self.host = HostProcs()

    def feed(self, topic: str, rec: dict[str, Any]) -> None:
        self.last_heard = time.monotonic()
        if topic == "cpu" and isinstance(rec.get("cpu"), int):
            cpu = rec["cpu"]
            self.latest[cpu] = rec
            self.counts[cpu] = self.counts.get(cpu, 0) + 1
            self.base.setdefault(cpu, rec)
        elif topic == "server":
            self.server = rec

    def mark(self) -> None:
        """Close the display interval: rates are from the previous mark to now."""
        for cpu, cur in self.latest.items():
            prev = self.shown.get(cpu, self.base.get(cpu, cur))
            if cur is not prev and cur.get("sim", 0) > prev.get("sim", 0):
                self.rates[cpu] = cpu_rates(prev, cur)
                self.shown[cpu] = cur

    def ready(self, ncpus: int) -> bool:
        """Every CPU has two samples, so an interval to show."""
        return len(self.rates) >= ncpus

    def ncpus(self) -> int:
        return len(self.live.get("cpu_pids") or []) or len(self.latest)

    def sim_time(self) -> float:
        return max((r.get("sim", 0.0) for r in self.latest.values()), default=0.0)

    def cpus(self, host: bool = True) -> list[dict[str, Any]]:
        rows = []
        pids = self.live.get("cpu_pids") or []
        for cpu in sorted(set(self.latest) | set(range(len(pids)))):
            cur = self.latest.get(cpu, {})
            r = dict(self.rates.get(cpu) or {"cpu": cpu})
            r["cpu"] = cpu
            r["pid"] = cur.get("pid") or (pids[cpu] if cpu < len(pids) else None)
            r["ticks_total"] = dict(cur.get("ticks") or {})
            r["samples"] = self.counts.get(cpu, 0)
            if host:
                r["host"] = self.host.get(r["pid"])
            rows.append(r)
        return rows

    def memory(self) -> dict[str, Any]:
        """Free pages and the machine's swap activity (kernel counters summed over CPUs)."""
        vm = (self.server or {}).get("vm") or {}
        kern: dict[str, int] = {}
        for rec in self.latest.values():
            for k, v in (rec.get("kernel") or {}).items():
                if isinstance(v, int):
                    kern[k] = kern.get(k, 0) + v
        return {"free_pages": vm.get("free"), "pages": vm.get("pages"),
                "swapouts": kern.get("swapouts", 0), "swapins": kern.get("swapins", 0),
                "pages_swapped_out": kern.get("pages_swapped_out", 0),
                "pages_swapped_in": kern.get("pages_swapped_in", 0),
                "pageins": kern.get("pageins", 0)}

    def procs(self) -> list[dict[str, Any]] | None:
        """The kernel's process table as the server's sample publishes it (``procs``:
        pid, comm, state, swapped, wchan, cpu, flags per process), or None when the
        kernel publishes none."""
        procs = (self.server or {}).get("procs")
        return list(procs) if isinstance(procs, list) else None

    def snapshot(self, sort: str = "wait_total", nlocks: int = 10) -> dict[str, Any]:
        """Everything ``smp top --once --json`` prints."""
        return {"time": time.time(), "sim": round(self.sim_time(), 4),
                "config": self.live.get("config"), "seed": self.live.get("seed"),
                "launcher_pid": self.live.get("launcher_pid"),
                "server_pid": self.live.get("server_pid"),
                "cpus": self.cpus(), "locks": top_locks(self.server, sort, nlocks),
                "memory": self.memory(), "procs": self.procs()}
