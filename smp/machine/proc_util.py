"""Host-process plumbing shared by the server, the CPUs and the launcher."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (nothing elsewhere).
    It stays set across ``execv``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so that no simulator
    process outlives the launcher that started it (and ignore Ctrl-C and SIGTERM sent to
    the whole process group: stopping the machine in order is the launcher's job)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # the launcher stops us, in order
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() == 1:            # the parent died before prctl took effect
        os._exit(1)


def describe_exit(code: int | None) -> str:
    """'exit status 3' / 'killed by SIGKILL' for a multiprocessing exitcode."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
