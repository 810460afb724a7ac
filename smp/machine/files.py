"""How the machine says that a file of the run could not be written.

The launcher writes the run's files (``log.txt``, ``stats.jsonl``, ``report.json``); the
server writes the record (``schedule.smpr``) and, for ``smp trace``, the timeline. A write
that fails (a full disk) ends the run, never the kernel: it is said in one line naming the
file (:func:`write_error`), and the file is given up, what was written before it kept.
"""

from __future__ import annotations

import errno


def write_error(path: str, e: OSError) -> str:
    """One line for a failed write of a run file: the path and the reason."""
    full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"cannot write {path}: {e.strerror or e}{full}"
