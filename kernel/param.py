"""System maximums and machine sizes, in one place (xv6's ``param.h``; STYLE.md practice 20).

The values that a run's config can change are filled in by :func:`configure` from the
resolved config when a CPU boots; the rest are the i386 numbers of FreeBSD 5.0.
"""

from __future__ import annotations

from typing import Any

NCPU = 64                 # most CPUs a machine may have (machine.cpus is checked against it)
PAGE_SIZE = 4096          # bytes per page (i386)
PAGE_SHIFT = 12
UAREA_PAGES = 1           # pages of struct user, without the pcb (i386)
KSTACK_PAGES = 2          # pages of a thread's kernel stack, with the pcb (i386)
KSTACK_GUARD_PAGES = 1
MAXSLP = 20               # seconds a process may sleep before it counts as idle (vmparam.h)
NPROC = 1024              # most processes at once (maxproc)

# filled from the config by configure()
hz = 100                  # hardclock ticks per simulated second (machine.hz)
ncpus = 1                 # CPUs in this machine (machine.cpus)
physmem_pages = 4096      # pages of physical memory (machine.memory)
swap_pages = 8192         # pages of swap (machine.swap)


def configure(cfg: dict[str, Any]) -> None:
    """Take the machine's sizes from a resolved config (``{"machine.hz": 100, ...}``)."""
    global hz, ncpus, physmem_pages, swap_pages
    hz = int(cfg["machine.hz"])
    ncpus = int(cfg["machine.cpus"])
    physmem_pages = int(cfg["machine.memory"]) // PAGE_SIZE
    swap_pages = int(cfg["machine.swap"]) // PAGE_SIZE
    if ncpus > NCPU:
        raise ValueError(f"{ncpus} CPUs is more than NCPU ({NCPU})")
