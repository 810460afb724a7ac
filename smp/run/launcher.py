"""The launcher: turns a config into a running machine, watches it, stops it, reports.

``run_machine`` forks the server and one process per CPU (``multiprocess``, fork start:
TRANSPORT.md measured it 8x faster than spawn), connects to the server as ``launcher``,
starts the machine, and then waits, event-driven, on one poller for whichever comes first:

* the run's end (its simulated duration, converted to host time);
* a ``PANIC`` event from the server;
* a CPU or the server exiting (each process's sentinel fd is in the poller);
* SIGINT or SIGTERM (a wakeup fd is in the poller).

Then it halts the machine (every CPU sends its final report to the server), fetches the
server's report, writes the run directory and reaps every process: a process that does
not stop within ``run.halt_timeout`` is killed. Every child also has a parent-death signal,
so none outlives a launcher that is itself killed.

With ``listen`` (``smp run --listen``, :mod:`smp.run.remote`) the server also listens on a
tcp endpoint for CPUs on other hosts; only CPUs ``0..local_cpus-1`` are started here, the
others join with ``smp cpu --join``. The machine starts once every CPU has said hello; a
CPU that has not joined within ``join_timeout`` ends the run with a message naming it.

Exit statuses: 0 a clean run; 1 a panic, a failed invariant or a dead process; 2 a usage
or config error (raised before anything starts); 128+N when stopped by signal N.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import multiprocess
import psutil
import zmq

from smp.hw import record
from smp.hw.protocol import ERR, LIVENESS_S, VERSION, Event, Op, pack, unpack
from smp import __version__
from smp.run.config import Config
from smp.machine.cpuproc import START_TIMEOUT, cpu_main
from smp.machine.files import write_error
from smp.machine.proc_util import describe_exit
from smp.run.remote import ListenSpec
from smp.run.sources import kernel_sources
from smp.run.rundir import (RunDirError, config_header, make_socket_dir, prepare_run_dir,
                            remove_stale_socket_dirs, write_config)
from smp.observe.live import LIVE_JSON, launcher_started, write_live
from smp.observe.monitor import MonitorError
from smp.observe.report import build_report, write_run_dir
from smp.machine.schedule import Replay
from smp.machine.publish import held_locks_line
from smp.machine.sequencer import TimeSpec
from smp.machine.server import detectors_of, server_main
from smp.machine.watch import WATCH_FILE
from smp.observe.summary import verdict

END_EVENT_GRACE_S = 1.0        # how long a CPU that exited 0 gets for its panic/halt event


class LaunchError(Exception):
    """The machine could not be started (the message says why)."""


@dataclasses.dataclass
class RunResult:
    exit_status: int
    run_dir: str
    report: dict[str, Any]


class _Control:
    """The launcher's DEALER connection to the server."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, b"launcher")
        self.sock.connect(endpoint)
        self.seq = 0
        self.events: list[list[Any]] = []

    def call(self, op: int, *args: Any, timeout: float) -> Any:
        self.seq += 1
        self.sock.send(pack([op, self.seq, 0, "launcher", 0, *args]))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"the server did not answer {Op(op).name} "
                                   f"within {timeout:.1f} s")
            msg = unpack(self.sock.recv())
            if msg[0] == Op.REPLY and msg[1] == self.seq:
                if msg[2] == ERR:
                    raise LaunchError(f"server refused {Op(op).name}: {msg[3]}")
                return msg[3]
            if msg[0] == Op.EVENT:
                self.events.append(msg)

    def drain_events(self) -> list[list[Any]]:
        while True:
            try:
                msg = unpack(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if msg[0] == Op.EVENT:
                self.events.append(msg)
        out, self.events = self.events, []
        return out

    def close(self) -> None:
        try:
            self.sock.send(pack([Op.BYE, 0, 0, "launcher", 0, "done"]))
        except zmq.ZMQError:
            pass
        self.sock.close(100)
        self.ctx.term()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoints(cfg: Config) -> tuple[str, str, str | None]:
    """The bus and the stats stream: ipc in a fresh private (0700) directory, or tcp on
    the loopback only."""
    if cfg["machine.transport"] == "tcp":
        return f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}", None
    d = make_socket_dir()
    return f"ipc://{d}/bus", f"ipc://{d}/stats", d


def _open_run_file(path: str) -> Any:
    """A run file opened for writing, unbuffered (binary): a write that fails (a full
    disk) fails at once, and what was written before it is on disk. Tests replace it."""
    return open(path, "wb", buffering=0)


class StatsRecorder:
    """Subscribes to the server's stats stream and writes ``stats.jsonl``: one record per
    CPU per interval (``"type": "cpu"``) and one for the server (``"type": "server"``).

    A write that fails (a full disk) does not raise: ``error`` says what happened, the
    file is cut back to its last whole record, and nothing more is written; the launcher
    then ends the run. A record that cannot be written as JSON (the server validates what
    CPUs send, so this is a second line) is counted in ``bad`` and skipped, as is a
    monitor that fails on a record (``monitor_errors``)."""

    def __init__(self, endpoint: str, path: str, monitors: Sequence[Any] = ()) -> None:
        from smp.observe.monitor import Stream
        self.monitors = list(monitors)        # each sees every record (smp/observe/progress.py)
        self.path = path
        self.f = _open_run_file(path)
        self.stream = Stream(endpoint)
        self.sock = self.stream.sock          # for the launcher's poller
        self.records = 0
        self.bad = 0
        self.monitor_errors: list[str] = []
        self.written = 0                      # bytes of whole records on disk
        self.error: str | None = None

    def drain(self) -> None:
        out = []
        for topic, rec in self.stream.poll(0):
            rec["type"] = topic
            try:
                out.append(json.dumps(rec, sort_keys=True) + "\n")
            except (TypeError, ValueError):
                self.bad += 1
                continue
            self.records += 1
            for m in self.monitors:
                try:
                    m.record(rec)
                except Exception as e:  # noqa: BLE001 - a monitor must not stop the run
                    if len(self.monitor_errors) < 10:
                        self.monitor_errors.append(f"{type(m).__name__}: "
                                                   f"{type(e).__name__}: {e}")
        if out and self.error is None:
            self._write("".join(out).encode())

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                n = self.f.write(view)
                view = view[n:]
            self.written += len(data)
        except OSError as e:
            self.error = write_error(self.path, e)
            try:
                self.f.truncate(self.written)     # no half record at the end
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.drain()
        finally:
            try:
                self.f.close()
            finally:
                self.stream.close()


def run_machine(cfg: Config, run_dir: str | None = None,
                log: Callable[[str], None] | None = None,
                sysinits: Sequence[Any] = (), monitors: Sequence[Any] = (),
                listen: ListenSpec | None = None, force: bool = False, replay: Any = None,
                until: int = 0, trace: str | None = None,
                watch: Sequence[str] = ()) -> RunResult:
    """Boot, run and stop one machine; write its run directory. Never leaves a process.

    ``monitors`` watch the run from the launcher process (the progress display, the
    Prometheus exporter): each has ``started(live)`` (called once the machine runs, with
    what live.json says; every process is forked by then, so it may start threads),
    ``record(rec)`` (every record of the stats stream) and ``close()``.

    ``sysinits`` are extra ``smp.kernel.sys.kernel.SysInit`` items declared in every CPU
    process before it boots (tests use them to run their own kernel code); the CPUs are
    forked, so they may be closures.

    ``listen``: take CPUs ``listen.local_cpus..`` from other hosts (see the module doc).

    ``run_dir``: see :mod:`smp.run.rundir` (a directory that is not empty is refused unless
    ``force``); a run directory that cannot be used raises RunDirError before anything
    has started.

    ``replay``: a record (``smp.hw.record.Record``) to replay instead of running freely: the
    server enforces its order and each CPU takes its events where the record says;
    ``until``: stop after that operation (``smp replay --until``). ``trace``: draw the
    run's timeline into that file (``smp.machine.trace``; ``smp trace``). ``watch``: watch
    these objects, fields or locks (``smp.machine.watch``; ``smp replay --watch``) into
    ``RUN_DIR/watch.txt``."""
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    ncpus = int(cfg["machine.cpus"])
    seed = int(cfg["run.seed"])
    rdir = prepare_run_dir(run_dir, str(cfg["run.dir"]), seed, force)
    write_config(rdir, config_header(rdir, __version__, seed) + cfg.to_toml())
    log_path = os.path.join(rdir, "log.txt")
    try:
        logf = _open_run_file(log_path)
    except OSError as e:
        raise RunDirError(write_error(log_path, e)) from None
    remove_stale_socket_dirs()                # what killed launchers left behind
    write_errors: list[str] = []          # run files that could not be written (full disk)

    def note(line: str) -> None:
        if not write_errors and not logf.closed:
            try:
                logf.write(f"{time.strftime('%H:%M:%S')} {line}\n".encode())
            except OSError as e:               # the log stops; the run goes on to its end
                write_errors.append(write_error(log_path, e))
        say(line)

    try:
        endpoint, stats_endpoint, ipc_dir = _endpoints(cfg)
    except OSError as e:                      # a full or unwritable $TMPDIR
        logf.close()
        raise LaunchError(f"cannot make the machine's private socket folder: "
                          f"{e.strerror or e}") from None
    flat = {k: cfg[k] for k in cfg}
    local = ncpus if listen is None else listen.local_cpus
    # the launcher waits this long for every CPU's HELLO (32 CPUs importing the kernel on
    # 2 cores take seconds); the CPUs wait a little longer for the start
    start_wait = LIVENESS_S + 5 * ncpus if listen is None else listen.join_timeout
    cpu_start_timeout = max(START_TIMEOUT, start_wait + LIVENESS_S)
    hello = ({"config": flat, "version": __version__, "start_timeout": cpu_start_timeout}
             if listen is not None else None)
    virtual = cfg["machine.time"] == "virtual"
    record_path = (os.path.join(rdir, record.RECORD_FILE)
                   if virtual and cfg["run.record"] and replay is None else None)
    timespec = TimeSpec(
        virtual=virtual, quantum_ns=int(cfg["machine.quantum"]),
        end_ns=int(float(cfg["run.duration"]) * 1e9) if virtual else TimeSpec.end_ns,
        record_path=record_path,
        record_header={"format": record.FORMAT, "protocol": VERSION.decode(),
                       "smp": __version__, "config_hash": record.config_hash(flat),
                       "config": flat, "seed": seed,
                       "sources": kernel_sources() if record_path else {}},
        replay=Replay(replay, until) if replay is not None else None,
        trace_path=os.path.abspath(trace) if trace else None,
        watch=tuple(watch), watch_path=os.path.join(rdir, WATCH_FILE) if watch else None)
    cpu_reads = ({c: replay.cpu_reads(c) for c in range(ncpus)}
                 if replay is not None else {})
    mp = multiprocess.get_context("fork")
    server = mp.Process(target=server_main, name="smp-server",
                        args=(endpoint, ncpus, int(cfg["machine.memory"]),
                              int(cfg["machine.swap"]), stats_endpoint,
                              float(cfg["run.stats_interval"]),
                              detectors_of(flat),
                              listen, hello, bool(cfg["machine.lines"]),
                              int(cfg["machine.kmem_objects"]), timespec,
                              int(cfg["machine.server_spin"]) / 1e9))
    cpus: dict[int, Any] = {}                 # cpu id -> process: the CPUs started here
    ctl: _Control | None = None
    stats: StatsRecorder | None = None
    live_path = os.path.join(rdir, LIVE_JSON)
    stop_signal: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_handlers = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop_signal.append(signum)

    t_wall0 = time.monotonic()
    server_report: dict[str, Any] = {}
    server_waited: dict[str, Any] = {}        # the server's counters, if it never started
    unstarted = False
    reason = "end of run"
    problems: list[str] = []
    notes: list[str] = []
    t0: float | None = None
    t_end: float | None = None
    replay_end: tuple[bool, str] | None = None
    old_fd: int | None = None
    server_lost = False                       # the server stopped answering (SIGSTOP)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, on_signal)
        old_fd = signal.set_wakeup_fd(wake_w)
        server.start()
        for i in range(local):
            p = mp.Process(target=cpu_main, name=f"smp-cpu{i}",
                           args=(i, endpoint, flat, LIVENESS_S, tuple(sysinits)),
                           kwargs={"start_timeout": cpu_start_timeout, "server_pid": server.pid,
                                   "replay": cpu_reads.get(i) if replay is not None else None,
                                   "replay_limit": (replay.read_limit(i) if replay is not None
                                                    else None)})
            p.start()
            cpus[i] = p
        note(f"machine: {ncpus} CPU{'s' if ncpus != 1 else ''}, "
             f"{cfg['machine.memory'] // 1024 // 1024} MiB, server pid {server.pid}, "
             f"cpu pid{'s' if len(cpus) != 1 else ''} "
             f"{', '.join(str(p.pid) for p in cpus.values()) or 'none'}; run dir {rdir}")
        if listen is not None:
            note(f"listening on {listen.endpoint} "
                 f"({'CURVE, keys in ' + listen.key_dir if listen.key_dir else 'no keys'})"
                 f" for cpus {local}..{ncpus - 1}: `smp cpu --join {listen.join_endpoint} "
                 f"--id K{' --key-dir DIR' if listen.key_dir else ''}`"
                 f"{' (HOST: this host as the others reach it)' if listen.wildcard else ''}"
                 f"; waiting up to {listen.join_timeout:.0f} s")
        ctl = _Control(endpoint)
        stats = StatsRecorder(stats_endpoint, os.path.join(rdir, "stats.jsonl"), monitors)
        said = ctl.call(Op.HELLO, VERSION, "launcher", -1, os.getpid(), timeout=LIVENESS_S)
        if said.get("write_failed"):         # the record (or the trace) cannot be written
            raise _Stopped(str(said["write_failed"]))
        t0 = _start(ctl, server, cpus, start_wait, stop_signal, ncpus, listen)
        live = {"stats": stats_endpoint, "launcher_pid": os.getpid(),
                "server_pid": server.pid, "cpu_pids": [p.pid for p in cpus.values()],
                "config": cfg.source, "seed": seed, "launcher_started": launcher_started()}
        _write_live(live_path, live)
        for m in monitors:
            m.started(live)
        duration = float(cfg["run.duration"])
        speed = float(cfg["machine.speed"])
        # wall time ends by the clock; virtual time when the server says every CPU has
        # reached the end (END), a replay when the record is done (DONE)
        deadline = time.monotonic() + duration / speed if not virtual else float("inf")
        watched = _Watched(ctl, stats, wake_r, server, cpus)
        ending = _watch(watched, deadline, stop_signal, replay is not None, problems)
        reason, replay_end, dead, server_lost = (ending.reason, ending.replay_end,
                                                 ending.dead, ending.server_lost)
        t_end = time.monotonic()
        if reason == "end of run" and server.is_alive() and replay is None:
            reason = _final_check(watched, 3 * float(cfg["run.halt_timeout"]), problems,
                                  notes, virtual, stop_signal) or reason
        note(f"stopping: {reason}")
        if server.is_alive() and not server_lost:
            server_report = _halt_and_report(ctl, reason, dead, cfg, problems,
                                             halt=replay_end is None)
    except _Stopped as e:
        reason = str(e)
        unstarted = True                # no CPU has anything to report: stop them all
        note(f"stopping: {reason}")
        if not stop_signal:
            problems.append(reason)
        if ctl is not None and server.is_alive():
            # what the server saw while it waited (a refused HELLO is counted there);
            # no CPU ran, so nothing else of its report is the run's
            try:
                waited = _halt_and_report(ctl, reason, [], cfg, problems, halt=False)
                server_waited = waited.get("server") or {}
            except Exception as e2:  # noqa: BLE001 - the run ends with a report
                problems.append(f"report: {type(e2).__name__}: {e2}")
    except Exception as e:  # noqa: BLE001 - the run ends with a report, never a hang
        said = isinstance(e, (RunFileError, LaunchError, MonitorError))  # for people
        reason = str(e) if said else f"launcher error: {type(e).__name__}: {e}"
        problems.append(reason)
        note(f"stopping: {reason}")
        if not said:
            for line in traceback.format_exc().splitlines():
                note(f"  {line}")
        if ctl is not None and server.is_alive() and not server_report:
            try:
                server_report = _halt_and_report(ctl, reason, [], cfg, problems)
            except Exception as e2:  # noqa: BLE001
                problems.append(f"halt: {type(e2).__name__}: {e2}")
    finally:
        # Every step runs, whatever the one before it raised: a step skipped here (the
        # reaping above all) would leave processes that multiprocess's exit handler
        # then waits for forever. The signal handlers stay until report.json is written:
        # a SIGINT now (a campaign that stops its other runs at one's failure) must not
        # cost the run its report; only a signal before this point stops the run.
        stopped_by = stop_signal[:1]

        def restore_signals() -> None:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)

        def close_wakeup() -> None:
            os.close(wake_r)
            os.close(wake_w)

        propagating = sys.exc_info()[0] is not None     # KeyboardInterrupt and the like
        _cleanup([
            ("log.txt", lambda: propagating and logf.close()),
            ("signal wakeup fd", lambda: old_fd is not None and signal.set_wakeup_fd(old_fd)),
            ("stats.jsonl", lambda: stats is not None and stats.close()),
            *[(f"monitor {type(m).__name__}", m.close) for m in monitors],
            ("live.json", lambda: _unlink(live_path)),
            ("control connection", lambda: ctl is not None and ctl.close()),
            ("lost server", lambda: server_lost and server.kill()),   # no halt to wait for
            ("reaping", lambda: _reap([*cpus.values(), server],
                                      float(cfg["run.halt_timeout"]), problems,
                                      list(cpus.values()) if unstarted
                                      else _unheard(cpus, server_report))),
            ("signal handlers", lambda: propagating and restore_signals()),
            ("wakeup pipe", close_wakeup),
            ("socket folder", lambda: ipc_dir and shutil.rmtree(ipc_dir, ignore_errors=True)),
        ], problems)
    try:
        if stats is not None:
            if stats.error and stats.error not in problems:
                problems.append(stats.error)
            if stats.bad:
                problems.append(f"stats.jsonl: {stats.bad} samples could not be written as "
                                f"JSON and were dropped")
            problems.extend(f"monitor failed: {m}" for m in stats.monitor_errors)
        problems.extend(e for e in write_errors if e not in problems)
        wall = time.monotonic() - t_wall0
        if virtual:
            sim = _virtual_seconds(server_report, float(cfg["run.duration"]))
        else:
            sim = ((t_end or time.monotonic()) - t0) * float(cfg["machine.speed"]) if t0 else 0.0
        if record_path is not None and server_report:   # (none: the machine never ran)
            damaged = _record_totals(record_path, server_report)
            if damaged and not any(p.startswith(f"cannot write {record_path}")
                                   for p in problems):
                problems.append(damaged)
        report = build_report(server_report, ncpus=ncpus, seed=seed, config=cfg.source,
                              reason=reason, problems=problems, notes=notes, wall_s=wall,
                              sim_s=sim, interrupted=bool(stopped_by), version=__version__)
        report["server"].update(server_waited)
        try:
            write_run_dir(rdir, report)
        except OSError as e:                       # report.json (or crash.txt): said, not kept
            err = write_error(e.filename or os.path.join(rdir, "report.json"), e)
            _unlink(os.path.join(rdir, "report.json.tmp"))
            report["problems"].append(err)
            report["ok"] = False
            write_errors.append(err)
        for err in write_errors:
            say(f"smp: {err}")
        note(f"run {verdict(report)}: {rdir}")
        try:
            logf.close()
        except OSError:
            pass
        if stopped_by:
            status = 128 + stopped_by[0]
        else:
            status = 0 if report["ok"] else 1
        return RunResult(status, rdir, report)
    finally:
        restore_signals()


@dataclasses.dataclass
class _Ending:
    """How a run ended, as the launcher saw it while it watched (:func:`_watch`)."""
    reason: str = "end of run"
    replay_end: tuple[bool, str] | None = None    # a replay's DONE: (identical?, message)
    dead: list[int] = dataclasses.field(default_factory=list)   # CPUs dead or stalled
    server_lost: bool = False                     # the server stopped answering (SIGSTOP)


class _Watched:
    """What the launcher waits on while the machine runs, in one poller: the server's
    control connection, the stats stream, the signal wakeup pipe, and each process's
    sentinel (ready when it exits: ``sentinels`` maps them to the process and its name)."""

    def __init__(self, ctl: _Control, stats: StatsRecorder, wake_r: int, server: Any,
                 cpus: dict[int, Any]) -> None:
        self.ctl, self.stats, self.wake_r, self.server, self.cpus = (ctl, stats, wake_r,
                                                                    server, cpus)
        self.poller = zmq.Poller()
        for sock in (ctl.sock, stats.sock, wake_r):
            self.poller.register(sock, zmq.POLLIN)
        self.sentinels: dict[int, tuple[str, Any]] = {server.sentinel: ("server", server)}
        for i, p in cpus.items():
            self.sentinels[p.sentinel] = (f"cpu{i}", p)
        for fd in self.sentinels:
            self.poller.register(fd, zmq.POLLIN)


def _watch(w: _Watched, deadline: float, stop_signal: list[int], replaying: bool,
           problems: list[str]) -> _Ending:
    """Watch the running machine, writing its stats stream, until its run ends: the
    deadline (wall time), every CPU at the end (virtual time: END), a panic or a
    shutdown (a replay goes on to its record's end: DONE), a signal, a stats file that
    cannot be written, a process that died, a CPU the server found unresponsive (killed
    here). What went wrong is appended to ``problems``."""
    ctl, stats, poller, sentinels, wake_r = w.ctl, w.stats, w.poller, w.sentinels, w.wake_r
    cpus, server = w.cpus, w.server
    end = _Ending()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready = dict(poller.poll(int(min(left, 1.0) * 1000)))
        if stats.sock in ready:
            stats.drain()
            if stats.error:                # a full disk: what was written stays
                problems.append(stats.error)
                end.reason = stats.error
                break
        if wake_r in ready:
            os.read(wake_r, 512)
        if stop_signal:
            end.reason = f"stopped by {signal.Signals(stop_signal[0]).name}"
            break
        # events first: a CPU that exits after a shutdown or a panic is no death
        events = ctl.drain_events() if ctl.sock in ready or ctl.events else []
        failed = write_failure(events)
        if failed:                   # the record or the trace: a full disk
            problems.append(failed)
            end.reason = failed
            break
        ended = end_reason(events)
        if ended:
            end.reason = ended
            if not replaying:        # a replay goes on to the record's end
                break
        done = [e for e in events if e[1] == Event.DONE]
        if done:                     # a replay's end (or its divergence)
            end.replay_end = (bool(done[0][2]), str(done[0][3]))
            if not ended and not end.reason.startswith(("panic", "shutdown")):
                end.reason = end.replay_end[1]
            if not end.replay_end[0]:
                problems.append(end.replay_end[1])
            break
        if not replaying and any(e[1] == Event.END for e in events):
            break                    # virtual time: every CPU is at the end
        gone = [fd for fd in sentinels if fd in ready]
        if gone and replaying:
            for fd in list(gone):            # a replayed CPU that has reported and
                sentinels[fd][1].join(0.1)   # left: the DONE event will follow
                if sentinels[fd][1].exitcode == 0 and sentinels[fd][0] != "server":
                    poller.unregister(fd)
                    del sentinels[fd]
                    gone.remove(fd)
        if gone:
            for fd in gone:
                sentinels[fd][1].join(0.1)
            if all(sentinels[fd][1].exitcode == 0 for fd in gone):
                # a CPU exits with status 0 only after a panic or a shutdown, whose
                # event may still be on its way here: wait a moment for it
                ended = _await_end(ctl, END_EVENT_GRACE_S, problems)
                if ended:
                    end.reason = ended
                    break
            lost = _server_lost(ctl, server, [sentinels[fd] for fd in gone])
            if lost:                       # the CPUs left because the server failed
                problems.append(lost)
                end.server_lost = True
            for fd in gone:
                name, p = sentinels[fd]
                problems.append(f"{name} (pid {p.pid}) died: {describe_exit(p.exitcode)}")
                if name.startswith("cpu"):
                    end.dead.append(int(name[3:]))
            end.reason = lost or problems[0]
            break
        stalled = [e for e in events if e[1] == Event.STALLED]
        if stalled:                  # a stopped or wedged CPU: named, never waited on
            k = int(stalled[0][2])
            proc = cpus.get(k)                # None: a CPU on another host
            where = f"pid {proc.pid}" if proc is not None else "remote"
            problems.append(f"cpu{k} ({where}) unresponsive: no message for "
                            f"{stalled[0][3]} s")
            if proc is not None:
                proc.kill()
            end.dead.append(k)
            end.reason = problems[-1]
            break
    return end


def _virtual_seconds(server_report: dict[str, Any], duration: float) -> float:
    """A virtual-time run's simulated seconds: the furthest CPU's clock, at most the run's
    duration (the final check's grace after its end is not part of the run)."""
    sim = max((float(((f or {}).get("clock") or {}).get("sim_time", 0.0))
               for f in (server_report.get("cpus") or {}).values()), default=0.0)
    return min(sim, duration)


def _record_totals(record_path: str, server_report: dict[str, Any]) -> str | None:
    """The record's size and operations into the report's ``schedule.record``. The
    server's report is taken while the CPUs still post their last operations (a panic,
    a halt): the record goes on after it. The record, closed now, has the final count,
    the one a replay replays and compares with. Returns what is wrong with it, if it is
    not whole (its last writes failed, the server died)."""
    sched = server_report.setdefault("schedule", {})
    rec = sched.setdefault("record", {"path": record_path})
    rec["bytes"] = record.size_of(record_path)
    try:
        final = record.read(record_path)
    except record.LogError as e:
        return str(e)
    if final.damage is not None:
        return f"{record_path}: {final.damage}: a replay stops where it does"
    rec["operations"] = final.requests
    return None


class RunFileError(Exception):
    """A file of the run directory could not be written (the message names it)."""


def _write_live(path: str, live: dict[str, Any]) -> None:
    """live.json, what `smp top` attaches to (smp/observe/live.py)."""
    try:
        write_live(path, live)
    except OSError as e:
        raise RunFileError(write_error(path, e)) from None


CPU_LOST_SERVER = 3       # cpu_main's exit status when the server went silent
SERVER_PROBE_S = 2.0      # how long the launcher waits for a server its CPUs lost


def _server_lost(ctl: _Control | None, server: Any, gone: list[tuple[str, Any]]) -> str | None:
    """CPUs that exit with CPU_LOST_SERVER heard nothing from the server. If the server,
    still alive, does not answer the launcher either, the server failed (stopped with
    SIGSTOP, or wedged), not the CPUs: the line that names it, else None."""
    if (ctl is None or not gone or not server.is_alive()
            or any(p.exitcode != CPU_LOST_SERVER for _, p in gone)):
        return None
    try:
        ctl.call(Op.LOOKUP, "", timeout=SERVER_PROBE_S)
        return None
    except TimeoutError:
        pass
    except LaunchError:
        return None
    try:
        stopped = psutil.Process(server.pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        stopped = False
    return (f"server (pid {server.pid}) unresponsive{' (stopped)' if stopped else ''}: "
            f"it did not answer the launcher within {SERVER_PROBE_S:.0f} s, and "
            f"{', '.join(name for name, _ in gone)} left, hearing nothing from it")


def _halt_and_report(ctl: _Control, reason: str, dead: list[int], cfg: Config,
                     problems: list[str], halt: bool = True) -> dict[str, Any]:
    """Halt the machine (every CPU sends its final report) and fetch the server's report
    (a replay that ended has halted already: ``halt`` False)."""
    server_report: dict[str, Any] = {}
    if halt:
        try:
            ctl.call(Op.CTL_HALT, reason, dead, timeout=float(cfg["run.halt_timeout"]))
        except TimeoutError as e:
            problems.append(f"halt: {e}")
    try:
        server_report = ctl.call(Op.CTL_REPORT, timeout=LIVENESS_S)
        problems.extend(held_locks_line(int(c), d) for c, d in
                        server_report.get("dead_cpus", {}).items())
        lost = (server_report.get("schedule") or {}).get("record_error")
        if lost and lost not in problems:          # (said at once, if it happened mid-run)
            problems.append(lost)
    except (TimeoutError, LaunchError) as e:
        problems.append(f"report: {e}")
    return server_report


def _cleanup(steps: Sequence[tuple[str, Callable[[], Any]]], problems: list[str]) -> None:
    """Run every step, whatever the one before it raised; a failure is a problem of the
    run, named after its step."""
    for what, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - the next step must run
            problems.append(f"cleanup: {what}: {type(e).__name__}: {e}")


def _unlink(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Stopped(Exception):
    """The machine ended before it started (a process died, or a signal came)."""


def _start(ctl: _Control, server: Any, cpus: dict[int, Any], timeout: float,
           stop_signal: list[int], ncpus: int, listen: ListenSpec | None = None) -> float:
    """CTL_START, watching every process meanwhile: a process that dies before the machine
    starts ends the run at once, naming it; so do CPUs that never say hello (named)."""
    deadline = time.monotonic() + timeout
    while True:
        for name, p in [("server", server)] + [(f"cpu{i}", c) for i, c in cpus.items()]:
            if p.exitcode is not None:
                raise _Stopped(f"{name} (pid {p.pid}) died before the machine started: "
                               f"{describe_exit(p.exitcode)}")
        if stop_signal:
            raise _Stopped(f"stopped by {signal.Signals(stop_signal[0]).name} before the "
                           f"machine started")
        try:
            return float(ctl.call(Op.CTL_START, timeout=0.5))
        except TimeoutError:
            if time.monotonic() > deadline:
                raise _Stopped(_missing_cpus(ctl, ncpus, len(cpus), timeout, listen)) from None


def _missing_cpus(ctl: _Control, ncpus: int, local: int, waited: float,
                  listen: ListenSpec | None) -> str:
    """Why the machine did not start: which CPUs never said hello."""
    try:
        joined = {int(c) for c in ctl.call(Op.CTL_REPORT, timeout=LIVENESS_S)["cpu_pids"]}
    except (TimeoutError, LaunchError, KeyError, TypeError, ValueError):
        return f"the machine did not start within {waited:.0f} s"
    missing = [c for c in range(ncpus) if c not in joined]
    text = (f"the machine did not start: cpu {', '.join(map(str, missing)) or '?'} did not "
            f"say hello within {waited:.0f} s")
    remote = [c for c in missing if c >= local]
    if listen is not None and remote:
        text += (f" (cpus from {local} on join from other hosts with `smp cpu --join "
                 f"{listen.join_endpoint} --id K{' --key-dir DIR' if listen.key_dir else ''}`; "
                 f"a CPU whose key the server does not accept cannot join)")
    return text


def end_reason(events: list[list[Any]]) -> str | None:
    """The run's end if ``events`` has a panic or a shutdown, else None."""
    ended = [e for e in events if e[1] in (Event.PANIC, Event.HALT)]
    if not ended:
        return None
    e = ended[0]
    return f"panic on cpu {e[2]}: {e[3]}" if e[1] == Event.PANIC else f"shutdown: {e[2]}"


def write_failure(events: list[list[Any]]) -> str | None:
    """Why the record or the trace could not be written (a full disk), if ``events`` say
    so (``Event.WRITE_FAILED``), else None."""
    return next((str(e[2]) for e in events if e[1] == Event.WRITE_FAILED), None)


def _await_end(ctl: _Control, timeout: float, problems: list[str]) -> str | None:
    """Wait up to ``timeout`` s for a panic or shutdown event. A record or trace that
    could not be written is a problem of the run (and its end, if nothing else ended
    it); other events are dropped: the run is ending."""
    deadline = time.monotonic() + timeout
    failed = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not ctl.sock.poll(int(left * 1000) + 1):
            return failed
        events = ctl.drain_events()
        if failed is None:
            failed = write_failure(events)
            if failed:
                problems.append(failed)
        ended = end_reason(events)
        if ended:
            return ended


def _final_check(w: _Watched, timeout: float, problems: list[str], notes: list[str],
                 virtual: bool = False, stop_signal: Sequence[int] = ()) -> str | None:
    """Ask every CPU to check the machine's invariants once more, and wait for all of
    them (or a panic, a death, the timeout). Returns a new stop reason, if any. In
    virtual time the machine runs the check within a grace of simulated time after the
    end and stops there (END again): the wall time it takes changes nothing it does."""
    ctl, poller, sentinels = w.ctl, w.poller, w.sentinels
    ctl.call(Op.CTL_FINAL, timeout=LIVENESS_S)
    deadline = time.monotonic() + timeout if not virtual else float("inf")
    checked = False
    while True:
        if stop_signal:
            return f"stopped by {signal.Signals(stop_signal[0]).name}"
        left = deadline - time.monotonic()
        if left <= 0:
            # Not a failure: the checks also ran once a simulated second during the run.
            notes.append(f"the final invariant check did not finish within {timeout:.1f} s "
                         f"(the machine was too busy); the periodic checks stand")
            return None
        ready = dict(poller.poll(int(min(left, 1.0) * 1000)) if not ctl.events else [])
        if w.wake_r in ready:                                        # the signal pipe
            os.read(w.wake_r, 512)
        if w.stats.sock in ready:            # the stats stream goes on into stats.jsonl
            w.stats.drain()
            if w.stats.error:
                problems.append(w.stats.error)
                return w.stats.error
        for fd, (name, p) in sentinels.items():
            if fd in ready:
                p.join(0.1)
                msg = f"{name} (pid {p.pid}) died: {describe_exit(p.exitcode)}"
                problems.append(msg)
                return msg
        for e in ctl.drain_events() if ctl.sock in ready or ctl.events else []:
            if e[1] == Event.PANIC:
                return f"panic on cpu {e[2]}: {e[3]}"
            failed = write_failure([e])
            if failed:                      # the record or the trace: a full disk
                problems.append(failed)
                return failed
            if e[1] == Event.CHECKED:
                if not virtual:
                    return None
                checked = True
            if e[1] == Event.END:
                if not checked:
                    notes.append("the final invariant check did not finish within its "
                                 "grace of simulated time; the periodic checks stand")
                return None


def _unheard(cpus: dict[int, Any], server_report: dict[str, Any]) -> list[Any]:
    """The CPU processes the server's report does not know: they never said hello (still
    starting when the run ended), so no HALT reached them and none will."""
    if not server_report:
        return []
    known = {int(c) for c in server_report.get("cpu_pids") or {}}
    return [p for c, p in cpus.items() if c not in known]


def _reap(procs: list[Any], timeout: float, problems: list[str],
          unheard: Sequence[Any] = ()) -> None:
    """Join every process; kill what does not stop in time. The ``unheard`` are killed at
    once: nothing would tell them to stop (they ignore SIGTERM, waiting for the server's
    word) and, the machine not having started for them, they hold nothing to report."""
    for p in unheard:
        if p._popen is not None and p.is_alive():
            p.kill()
    deadline = time.monotonic() + timeout
    for p in procs:
        if p._popen is None:           # never started
            continue
        p.join(max(deadline - time.monotonic(), 0.05))
    for p in procs:
        if p._popen is not None and p.is_alive():
            problems.append(f"{p.name} (pid {p.pid}) did not stop in {timeout:.1f} s; killed")
            p.kill()
            p.join(2.0)
