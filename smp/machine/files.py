"""How the machine says that a file of the run could not be written.

The launcher writes the run's files (``log.txt``, ``stats.jsonl``, ``report.json``); the
server writes the record (``schedule.smpr``) and, for ``smp trace``, the timeline. A write
that fails (a full disk) ends the run, never the kernel: it is said in one line naming the
file (:func:`write_error`), and the file is given up, what was written before it kept.
"""

from __future__ import annotations

import errno
from typing import IO, Callable


def write_error(path: str, e: OSError) -> str:
    """One line for a failed write of a run file: the path and the reason."""
    full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"cannot write {path}: {e.strerror or e}{full}"


class RunFile:
    """A file the server writes as the run goes (``smp trace``'s timeline, a watch's
    lines): once a write fails it is given up, ``error`` says why, and ``failed`` is
    told, once; what was written before stays."""

    def __init__(self, path: str, failed: Callable[[str], None]) -> None:
        self.path = path
        self.failed = failed
        self.error: str | None = None
        self.f: IO[str] = open(path, "w")

    def write(self, text: str) -> None:
        if self.error is not None:
            return
        try:
            self.f.write(text)
        except OSError as e:
            self._give_up(e)

    def flush(self) -> None:
        """Write out what is buffered (a full disk is found while the launcher still
        listens, not only at the close)."""
        if self.error is None and not self.f.closed:
            try:
                self.f.flush()
            except OSError as e:
                self._give_up(e)

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as e:                 # what was buffered did not fit
            self._give_up(e)

    def _give_up(self, e: OSError) -> None:
        if self.error is None:
            self.error = write_error(self.path, e)
            self.failed(self.error)
