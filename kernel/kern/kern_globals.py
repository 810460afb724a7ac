"""The kernel's global variables: the locks and lists that FreeBSD keeps in ``.data``.

PORT: in C each global is its own symbol (``Giant`` in kern_mutex.c, ``allproc`` and
``allproc_lock`` in kern_proc.c, ``proc0`` in init_main.c). Here they are the fields of one
``struct kernel`` record in server memory, created by the boot CPU and found by the others
through the server's symbol table (``LOOKUP "kernel_globals"``), the way an AP finds the BSP's
data at a fixed address. A field's address is fixed for the life of the run, so ``G`` can
be held by every CPU the way a linker address can: only the fields' *contents* are shared
state, and every read of them goes to the server.
"""

from __future__ import annotations

from smp.kernel.sys.kstruct import F, KObj, KStruct

struct_kernel = KStruct("kernel", [
    F("Giant", "mtx"),
    F("sched_lock", "mtx"),
    F("allproc_lock", "sx"),
    F("proctree_lock", "sx"),
    F("allproc", "list", "d"),          # every process (FOREACH_PROC_IN_SYSTEM)
    F("zombproc", "list", "d"),
    F("pidhashtbl", "map", "d"),        # pid -> proc (PIDHASH)
    F("nprocs", "int", "d"),
    F("lastpid", "int", "d"),
    F("proc0", "ptr:proc", "b"),
    F("thread0", "ptr:thread", "b"),
    F("ticks", "int", "n"),             # the BSP's tick count, for readers of "time"
    F("booted_cpus", "int", "n"),      # APs done with their per-CPU SYSINITs
    F("mp_naps", "int", "b", const=True),   # the APs (mp_machdep.c's mp_naps)
], doc="the kernel's global variables")

G: KObj = None  # type: ignore[assignment]   # set at boot in every CPU process


def set_globals(g: KObj) -> None:
    global G
    G = g
