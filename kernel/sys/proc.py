"""``struct proc``, ``struct ksegrp``, ``struct thread`` and their flags (FreeBSD ``sys/sys/proc.h``,
5.0-era, late 2002).

Lock key, as in proc.h ("Below is a key of locks used to protect each member of struct
proc"):

    a - only touched by curproc or parent during fork/wait
    b - created at fork, never changes
    c - locked by the proc mtx (``p_mtx``)
    d - locked by allproc_lock
    e - locked by proctree_lock
    j - locked by sched_lock
    k - only accessed by curthread
    m - Giant
    n - not locked, lazy
    (none) - set once at creation, or the PORT notes say why

The letters travel to the server with each declaration, so the field-lock checks of later
work read them from here, the one place they are written down.

Only the fields that the ported code and the kernel around it use are declared; each keeps
its FreeBSD name. Flags are ``enum.IntFlag`` members with FreeBSD's names and values.
"""

from __future__ import annotations

import enum

from smp.kernel.sys.kstruct import F, KStruct

# the state macros below expand in their caller, as C macros do: their loads and stores
# are the caller's (the site a report names is the line that used the macro)
__site_transparent__ = True


class P(enum.IntFlag):
    """``p_flag`` (c)."""
    P_ADVLOCK = 0x00001
    P_CONTROLT = 0x00002
    P_KTHREAD = 0x00004
    P_NOLOAD = 0x00008
    P_PPWAIT = 0x00010
    P_SUGID = 0x00100
    P_SYSTEM = 0x00200
    P_SINGLE_EXIT = 0x00400
    P_TRACED = 0x00800
    P_WAITED = 0x01000
    P_WEXIT = 0x02000
    P_EXEC = 0x04000
    P_KSES = 0x08000
    P_STOPPED_SIG = 0x20000
    P_STOPPED_TRACE = 0x40000
    P_STOPPED_SINGLE = 0x80000


class PS(enum.IntFlag):
    """``p_sflag`` (j)."""
    PS_INMEM = 0x00001
    PS_XCPU = 0x00002
    PS_PROFIL = 0x00004
    PS_ALRMPEND = 0x00020
    PS_PROFPEND = 0x00040
    PS_SWAPINREQ = 0x00100
    PS_SWAPPING = 0x00200
    PS_NEEDSIGCHK = 0x02000
    PS_SWAPPINGIN = 0x04000


class PRS(enum.IntEnum):
    """``p_state`` (j)."""
    PRS_NEW = 0
    PRS_NORMAL = 1
    PRS_ZOMBIE = 2


class TDS(enum.IntEnum):
    """``td_state`` (j)."""
    TDS_INACTIVE = 0x20
    TDS_INHIBITED = 0x21
    TDS_CAN_RUN = 0x22
    TDS_RUNQ = 0x23
    TDS_RUNNING = 0x24


class TDI(enum.IntFlag):
    """``td_inhibitors`` (j): why a thread cannot run."""
    TDI_SUSPENDED = 0x01
    TDI_SLEEPING = 0x02
    TDI_SWAPPED = 0x04
    TDI_LOCK = 0x08
    TDI_IWAIT = 0x10


class TDF(enum.IntFlag):
    """``td_flags`` (j)."""
    TDF_INPANIC = 0x000002
    TDF_SINTR = 0x000008
    TDF_TIMEOUT = 0x000010
    TDF_SELECT = 0x000040
    TDF_CVWAITQ = 0x000080
    TDF_TIMOFAIL = 0x001000
    TDF_NEEDRESCHED = 0x010000


# the flag names are used bare in ported code, as in C
globals().update({m.name: m for e in (P, PS, PRS, TDS, TDI, TDF) for m in e})  # type: ignore[attr-defined]

# scheduling classes (sys/priority.h)
PRI_ITHD = 1
PRI_REALTIME = 2
PRI_TIMESHARE = 3
PRI_IDLE = 4
PRI_FIFO_BIT = 8


def PRI_BASE(c: int) -> int:
    return c & ~PRI_FIFO_BIT


def PRI_IS_REALTIME(c: int) -> bool:
    return PRI_BASE(c) == PRI_REALTIME


struct_proc = KStruct("proc", [
    F("p_threads", "list", ""),             # all threads (unannotated in 5.0's proc.h)
    F("p_ksegrps", "list", ""),             # all ksegrps
    F("p_mtx", "mtx"),                      # the proc lock
    F("p_flag", "int", "c"),
    F("p_sflag", "int", "j"),
    F("p_state", "int", "j", int(PRS.PRS_NEW)),
    F("p_pid", "int", "b"),
    F("p_comm", "str", "b", ""),
    F("p_lock", "int", "c"),                # process hold count (PHOLD)
    F("p_swtime", "int", "j"),
    F("p_pptr", "ptr:proc", "e"),
    F("p_children", "list", "e"),
    F("p_numthreads", "int", "j"),
    F("p_numksegrps", "int", "c"),
    F("p_vmspace", "ptr:vmspace", "b"),
    F("p_upages_obj", "ptr:vm_object", "a"),
    F("p_uarea", "int", "k"),               # kernel virtual address of the U-area
    F("p_nice", "int", "j"),
    F("p_xstat", "int", "c"),
    F("p_oncpu", "int", "j", -1),           # PORT: the CPU its threads are pinned to
    F("p_stats", "int", "b"),               # kva of the U-area's pstats
    F("p_sigacts", "int", "b"),             # kva of the sigacts (0: NULL)
    F("p_procsig", "ptr:procsig", "b"),
    F("p_limit", "ptr:plimit", "m"),
], doc="a process")

struct_procsig = KStruct("procsig", [
    F("ps_refcnt", "int", "m", 1),
    F("ps_flag", "int", "m"),
], doc="signal state shared by rfork(RFSIGSHARE)")

struct_ksegrp = KStruct("ksegrp", [
    F("kg_proc", "ptr:proc", "b"),
    F("kg_threads", "list", ""),
    F("kg_pri_class", "int", "j", PRI_TIMESHARE),
    F("kg_user_pri", "int", "j", 160),
    F("kg_nice", "int", "j"),
    F("kg_slptime", "int", "j"),
    F("kg_estcpu", "int", "j"),
], doc="a group of threads sharing scheduling parameters")

struct_thread = KStruct("thread", [
    F("td_proc", "ptr:proc", "b"),
    F("td_ksegrp", "ptr:ksegrp", "b"),     # (*) never changes for a thread here
    F("td_flags", "int", "j"),
    F("td_inhibitors", "int", "j"),
    F("td_state", "int", "j", int(TDS.TDS_INACTIVE)),
    F("td_priority", "int", "j", 160),
    F("td_base_pri", "int", "j", 160),
    F("td_wchan", "int", "j"),              # sleep channel address, 0 if not asleep
    F("td_wmesg", "str", "j", ""),
    F("td_blocked", "int", "j"),            # the mutex it blocks on (TDI_LOCK)
    F("td_lockname", "str", "j", ""),
    F("td_oncpu", "int", "j", -1),          # PORT: the CPU it is pinned to
    F("td_name", "str", "b", ""),           # PORT: kthread/program name for dumps
    F("td_kstack", "int", "b"),             # kernel virtual address of the kernel stack
    F("td_kstack_obj", "ptr:vm_object", "b"),
    F("td_didrun", "int", "j"),             # PORT: 4BSD's KEF_DIDRUN, for schedcpu
], doc="a kernel-schedulable thread")


# -- the inhibitor and state macros (sys/proc.h), on a thread record ----------------------
def TD_IS_SLEEPING(td_inhib: int) -> bool:
    return bool(td_inhib & TDI.TDI_SLEEPING)


def TD_IS_SUSPENDED(td_inhib: int) -> bool:
    return bool(td_inhib & TDI.TDI_SUSPENDED)


def TD_IS_SWAPPED(td_inhib: int) -> bool:
    return bool(td_inhib & TDI.TDI_SWAPPED)


def TD_ON_LOCK(td_inhib: int) -> bool:
    return bool(td_inhib & TDI.TDI_LOCK)


def TD_SET_INHIB(td, bit: int) -> None:  # type: ignore[no-untyped-def]
    """``(td)->td_state = TDS_INHIBITED; (td)->td_inhibitors |= (inhib);`` as the C
    compiles: a store of ``td_state``, then a read-modify-write of ``td_inhibitors`` (a
    load, then a store: ``orl`` on memory without a lock prefix is not atomic on SMP). The
    caller holds sched_lock, or, where the 2002 code does not (F2, FINDINGS.md), races."""
    td.td_state = int(TDS.TDS_INHIBITED)
    td.td_inhibitors = td.td_inhibitors | int(bit)


def TD_CLR_INHIB(td, bit: int) -> None:  # type: ignore[no-untyped-def]
    """``if ((td->td_inhibitors & (inhib)) && ((td->td_inhibitors &= ~(inhib)) == 0))
    td->td_state = TDS_CAN_RUN;`` as the C compiles: a load for the test, then a
    read-modify-write of ``td_inhibitors`` (a second load and a store: ``andl`` on memory),
    then, when no inhibitor is left, a store of ``td_state``. Does not queue the thread:
    the caller must call setrunnable()."""
    if td.td_inhibitors & bit:
        inhib = td.td_inhibitors & ~int(bit)
        td.td_inhibitors = inhib
        if inhib == 0:
            td.td_state = int(TDS.TDS_CAN_RUN)


def TD_SET_SLEEPING(td) -> None:  # type: ignore[no-untyped-def]
    TD_SET_INHIB(td, TDI.TDI_SLEEPING)


def TD_CLR_SLEEPING(td) -> None:  # type: ignore[no-untyped-def]
    TD_CLR_INHIB(td, TDI.TDI_SLEEPING)


def TD_SET_LOCK(td) -> None:  # type: ignore[no-untyped-def]
    TD_SET_INHIB(td, TDI.TDI_LOCK)


def TD_CLR_LOCK(td) -> None:  # type: ignore[no-untyped-def]
    TD_CLR_INHIB(td, TDI.TDI_LOCK)


def TD_SET_SWAPPED(td) -> None:  # type: ignore[no-untyped-def]
    TD_SET_INHIB(td, TDI.TDI_SWAPPED)


def TD_CLR_SWAPPED(td) -> None:  # type: ignore[no-untyped-def]
    TD_CLR_INHIB(td, TDI.TDI_SWAPPED)


def thread_safetoswapout(td_inhib: int) -> bool:
    """proc.h: a thread is safe to swap out when it is sleeping or suspended."""
    return TD_IS_SLEEPING(td_inhib) or TD_IS_SUSPENDED(td_inhib)
