"""The U-area (``struct user``, ``sys/user.h``) and resource limits (``sys/resource.h``,
``sys/resourcevar.h``), as laid out in the U-area's page of physical memory.

The U-area is real memory: one page (``UAREA_PAGES``) of the process's ``p_upages_obj``,
mapped at ``p_uarea`` in kernel virtual space. Its bytes move to swap and back with the
process, so whatever the kernel keeps there must survive. The layout (offsets into the
page) stands in for i386's::

    U_SIGACTS     struct sigacts u_sigacts     (copied from the parent at fork)
    U_STATS       struct pstats u_stats
      PSTAT_STARTZERO .. PSTAT_ENDZERO         zeroed at fork (p_ru: rusage; ru_nswap)
      PSTAT_STARTCOPY .. PSTAT_ENDCOPY         copied from the parent at fork
    U_KPROC       struct kinfo_proc u_kproc    (pid and a check word: what ps reads)
"""

from __future__ import annotations

from typing import Any

from smp.kernel.sys.kstruct import F, KStruct

U_SIGACTS = 0
SIGACTS_SIZE = 256
U_STATS = 256
PSTAT_STARTZERO = U_STATS
RU_NSWAP = U_STATS + 64                    # p_ru.ru_nswap (8 bytes)
PSTAT_ENDZERO = U_STATS + 144
PSTAT_STARTCOPY = PSTAT_ENDZERO
PSTAT_ENDCOPY = U_STATS + 192
U_KPROC = 1024
KI_PID = U_KPROC                           # 8 bytes
KI_CHECK = U_KPROC + 8                     # 8 bytes: pid * KI_MAGIC


KI_MAGIC = 0x9E3779B97F4A7C15


def ki_check(pid: int) -> int:
    return (pid * KI_MAGIC) & (2**64 - 1)


# sys/resource.h
RLIMIT_CPU = 0
RLIMIT_FSIZE = 1
RLIMIT_DATA = 2
RLIMIT_STACK = 3
RLIMIT_CORE = 4
RLIMIT_RSS = 5
RLIM_NLIMITS = 6
RLIM_INFINITY = (1 << 63) - 1

# i386 vmparam.h
DFLDSIZ = 128 * 1024 * 1024
MAXDSIZ = 512 * 1024 * 1024
DFLSSIZ = 8 * 1024 * 1024
MAXSSIZ = 64 * 1024 * 1024

struct_rlimit = KStruct("rlimit", [
    F("rlim_cur", "int", "c"),
    F("rlim_max", "int", "c"),
], doc="one resource limit")

struct_plimit = KStruct("plimit", [F(f"pl_rlimit{i}", "ptr:rlimit", "c")
                                   for i in range(RLIM_NLIMITS)] +
                        [F("pl_refcnt", "int", "c", 1)], doc="a process's limits")


def plimit_new() -> Any:
    lims = {f"pl_rlimit{i}": struct_rlimit.new() for i in range(RLIM_NLIMITS)}
    return struct_plimit.new(**lims)


class _RLimits:
    """``p->p_rlimit[i]``: the i-th limit of a process's plimit."""

    def __init__(self, plimit: Any) -> None:
        self.plimit = plimit

    def __getitem__(self, i: int) -> Any:
        return getattr(self.plimit, f"pl_rlimit{i}")


def p_rlimit(p: Any) -> _RLimits:
    return _RLimits(p.p_limit)
