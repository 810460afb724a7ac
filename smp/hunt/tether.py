"""``python -m smp.hunt.tether PPID -- COMMAND ...``: run COMMAND so that it dies with PPID.

A cluster worker starts each machine through this: it asks Linux for a parent-death
signal (SIGKILL), checks that its parent is still PPID (a parent that died in between
would never send it) and then becomes COMMAND (``execv``: the signal stays set across it).
So a Dask worker killed mid-run takes its ``smp run`` with it, and that launcher's own
server and CPUs follow it (``smp.machine.proc_util.die_with_parent``): nothing is orphaned.
SIGINT, which stops a machine in order, is taken again (the worker may ignore it).

PORT: the launcher's children use ``die_with_parent``, which also ignores SIGINT; a
campaign stops a machine with SIGINT, so ``smp run`` itself must keep it. And the signal
is asked for here, in a fresh single-threaded process, not in a ``preexec_fn`` of the
worker's (multi-threaded) ``Popen``, where Python does not promise it is safe.
"""

from __future__ import annotations

import os
import signal
import sys

from smp.machine.proc_util import set_parent_death_signal


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m smp.hunt.tether PPID -- COMMAND ...", file=sys.stderr)
        return 2
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != int(argv[0]):           # the parent died before the signal was set
        return 1
    # a worker of a LocalCluster ignores SIGINT (smp.hunt.cluster says why), and an
    # ignored signal is inherited across exec: the machine must take it, to stop in order
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(argv[2], argv[2:])
    return 127                                 # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
