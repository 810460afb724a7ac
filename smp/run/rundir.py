"""A run's directory, made ready before anything starts; and what a killed launcher left.

Rules (``smp run``, :func:`prepare_run_dir`):

* no ``--run-dir``: a new directory under ``run.dir`` named after the time and the seed
  (``runs/20261126-101500-s1``), never one that exists;
* ``--run-dir DIR`` that does not exist: made (with its parents);
* ``--run-dir DIR`` that exists and is empty: used;
* ``--run-dir DIR`` that exists and is not empty: refused (exit 2), because the new run's
  files would lie next to an older run's (a crash.txt of another run, say) unless
  ``--force`` says to clear it. Even with ``--force`` a directory is cleared only if it
  holds a run (a ``config.toml`` that ``smp run`` wrote, or a ``report.json``) and no
  machine is running in it (its ``live.json`` names a launcher that is alive); anything
  else is refused, so that a slip of the command line cannot empty a home directory.

A path that cannot be used (a file, a directory that cannot be written, a ``run.dir``
that cannot be written) is a :class:`RunDirError`: one line naming the path and the
reason, exit 2, before any process starts. The first file of the run, ``config.toml``, is
written here too, so that "cannot be written" is found out now and not after the
machine has started.

Leftovers of a launcher that was killed (SIGKILL: no cleanup ran). Its run directory
keeps a ``live.json``; readers do not trust it unless the launcher it names is alive and
is the same process (its start time is in live.json) and its server is alive
(smp/observe/live.py). Its private socket folder (``$TMPDIR/smp-*``) stays behind too;
each folder holds ``launcher.pid``, and the next launcher removes the folders whose
launcher is gone (:func:`remove_stale_socket_dirs`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time

from smp.observe.live import launcher_started, live_pids_alive, process_alive, read_live_json

SOCKET_DIR_PREFIX = "smp-"
SOCKET_DIR_OWNER = "launcher.pid"        # in each private socket folder: who made it
STALE_UNOWNED_S = 600.0                  # a folder without an owner file, this old: stale


class RunDirError(Exception):
    """A run directory that cannot be used (the message names it); exit status 2."""


def config_header(rdir: str, version: str, seed: int) -> str:
    """The first lines of a run's config.toml: what made it, and the one command that
    reruns it (shell-quoted: run directories may have spaces and quotes in their names)."""
    return (f"# smp {version}: resolved config of this run (seed {seed})\n"
            f"# rerun: smp run {shlex.quote(os.path.join(rdir, 'config.toml'))}\n")


def stamp() -> str:
    """The local time in a folder's name: ``20261126-101500`` (runs, campaigns)."""
    return time.strftime("%Y%m%d-%H%M%S")


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def new_dir(base: str, name: str, what: str = "a run directory") -> str:
    """A new, empty directory ``base/name`` (``name-1``, ``name-2``, ... if taken), made
    exclusively: two runs or campaigns started in the same second with the same seed never
    share one. ``base`` is the config's run.dir, made if missing; RunDirError names it."""
    try:
        os.makedirs(base, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"run.dir {base}: exists and is not a directory") from None
    except OSError as e:
        raise RunDirError(f"run.dir {base}: cannot create it: {_why(e)}") from None
    if not os.path.isdir(base):
        raise RunDirError(f"run.dir {base}: exists and is not a directory")
    for n in range(1000):
        path = os.path.join(base, name + (f"-{n}" if n else ""))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"run.dir {base}: cannot create {what} in it: "
                              f"{_why(e)}") from None
    raise RunDirError(f"run.dir {base}: cannot create {what} in it (1000 names taken)")


def _is_run(path: str, entries: list[str]) -> bool:
    if "report.json" in entries:
        return True
    try:
        with open(os.path.join(path, "config.toml")) as f:
            return f.readline().startswith("# smp ")
    except (OSError, UnicodeDecodeError):
        return False


def _clear(path: str, entries: list[str]) -> None:
    info = read_live_json(path)
    if info is not None and live_pids_alive(info):
        raise RunDirError(f"--run-dir {path}: a machine is running in it (launcher pid "
                          f"{info.get('launcher_pid')}); not cleared")
    if not _is_run(path, entries):
        raise RunDirError(f"--run-dir {path}: is not empty and does not hold a run of smp "
                          f"(no config.toml written by smp run, no report.json): not "
                          f"cleared even with --force; give an empty or new directory")
    for name in entries:
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except OSError as e:
            raise RunDirError(f"--run-dir {path}: cannot clear {name}: {_why(e)}") from None


def prepare_run_dir(run_dir: str | None, base: str, seed: int, force: bool = False) -> str:
    """The directory the run writes into, ready and empty (see the module doc); raises
    RunDirError before anything has started."""
    if run_dir is None:
        return new_dir(base, f"{stamp()}-s{seed}")
    path = run_dir
    if os.path.lexists(path) and not os.path.isdir(path):
        raise RunDirError(f"--run-dir {path}: exists and is not a directory")
    if os.path.isdir(path):
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            raise RunDirError(f"--run-dir {path}: cannot read it: {_why(e)}") from None
        if entries and not force:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(f"--run-dir {path}: is not empty (it holds {shown}); a run "
                              f"would mix its files with these: give a new directory, "
                              f"or --force to clear this one")
        if entries:
            _clear(path, entries)
    else:
        try:
            os.makedirs(path)
        except OSError as e:
            raise RunDirError(f"--run-dir {path}: cannot create it: {_why(e)}") from None
    return path


def write_config(rdir: str, text: str) -> None:
    """config.toml, the run's first file: a failure is a RunDirError (nothing started)."""
    path = os.path.join(rdir, "config.toml")
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write it: {_why(e)}") from None


# -- what a killed launcher leaves ----------------------------------------------------------
def make_socket_dir() -> str:
    """A fresh private (0700) folder for the run's ipc sockets, owned by this launcher."""
    d = tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX)
    os.chmod(d, 0o700)
    with open(os.path.join(d, SOCKET_DIR_OWNER), "w") as f:
        f.write(f"{os.getpid()} {launcher_started()}\n")
    return d


def remove_stale_socket_dirs(tmp: str | None = None) -> list[str]:
    """Remove the socket folders that killed launchers left (ours only: same user, our
    prefix, an owner file naming a launcher that is gone; a folder without an owner file
    only when old and nothing listens in it). Returns what was removed; never raises."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(tmp)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SOCKET_DIR_PREFIX):
            continue
        d = os.path.join(tmp, name)
        try:
            st = os.lstat(d)
            if not os.path.isdir(d) or os.path.islink(d) or st.st_uid != os.getuid():
                continue
            if not _stale(d, st.st_mtime):
                continue
            shutil.rmtree(d)
            removed.append(d)
        except OSError:
            continue
    return removed


def _stale(d: str, mtime: float) -> bool:
    try:
        with open(os.path.join(d, SOCKET_DIR_OWNER)) as f:
            pid_s, _, started_s = f.read().strip().partition(" ")
        return not process_alive(int(pid_s), float(started_s) if started_s else None)
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return False
    if time.time() - mtime < STALE_UNOWNED_S:
        return False
    entries = os.listdir(d)
    return entries == [] or (set(entries) <= {"bus", "stats"} and not _listening(d))


def _listening(d: str) -> bool:
    import socket
    for name in ("bus", "stats"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(os.path.join(d, name))
            return True
        except OSError:
            continue
        finally:
            s.close()
    return False
