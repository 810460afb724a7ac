"""System calls for the synthetic user programs: the kernel entry points they use, each
entered the way a 2002 syscall was (Giant taken where the syscall was not MPSAFE).

A user program is a function run by a user process's thread. It spends simulated user
time with :func:`compute` (preemptible: the clock's round-robin takes effect there), and
enters the kernel only through the functions here. User memory is real: ``touch`` faults
the page in (from swap if it was paged out) and reads or writes its bytes in physical
memory, checking that what it reads is what it last wrote.
"""

from __future__ import annotations

from typing import Callable

from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_exit import exit1, wait1
from smp.kernel.kern.kern_fork import fork1
from smp.kernel.kern.kern_mutex import mtx_lock, mtx_lock_spin, mtx_unlock, mtx_unlock_spin
from smp.kernel.kern.kern_proc import FOREACH_PROC_IN_SYSTEM, PRELE, PROC_UNLOCK, _PHOLD, pfind
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.kern.kern_synch import maybe_yield, tsleep
from smp.kernel.kern.kern_thread import curlocal, curproc, curthread
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.param import ESRCH, PWAIT
from smp.kernel.sys.proc import P, PRS, PS
from smp.kernel.sys.user import KI_CHECK, KI_PID, ki_check
from smp.kernel.vm.vm import KERN_SUCCESS, OBJT_DEFAULT, RFFDG, RFPROC, VM_PROT_READ, VM_PROT_WRITE
from smp.kernel.vm.vm_fault import vm_fault_page, vm_page_release
from smp.kernel.vm.vm_glue import kernacc, useracc, vslock, vsunlock
from smp.kernel.vm.vm_map import vm_map_find, vm_map_remove
from smp.kernel.vm.vm_object import vm_object_allocate

PAGE = param.PAGE_SIZE
USER_BASE = 0x08048000


def compute(us: float) -> None:
    """Run in user mode for ``us`` simulated microseconds, then take any reschedule."""
    md.cpu_work(us, "user")
    maybe_yield()


def getpid() -> int:
    return curproc().p_pid  # type: ignore[no-any-return]


def fork(child_main: Callable[[], None], name: str, flags: int = RFFDG | RFPROC) -> int:
    """fork/rfork: not MPSAFE in 2002, so the whole call runs under Giant."""
    G = kern_globals.G
    mtx_lock(G.Giant)
    err, p2 = fork1(curthread(), flags, child_main, name)
    pid = p2.p_pid if p2 is not None else 0
    mtx_unlock(G.Giant)
    return -err if err else pid


def exit(code: int) -> None:  # noqa: A001 - the syscall's name
    mtx_lock(kern_globals.G.Giant)
    exit1(code)


def wait() -> tuple[int, int, int]:
    G = kern_globals.G
    mtx_lock(G.Giant)
    r = wait1(-1)
    mtx_unlock(G.Giant)
    return r


def wait_for_boot() -> None:
    """PORT: wait until every AP has run its per-CPU SYSINITs (its kernel threads exist):
    init, before it starts user land (programs.prog_init). A poll, a tick at a time, on
    &booted_cpus: the liveness detector's ``boot`` wait (init_main.BOOT_WAITS)."""
    G = kern_globals.G
    while int(G.booted_cpus) < int(G.mp_naps):
        tsleep(G.addr("booted_cpus"), PWAIT, "boot", 1)


def sleep_ticks(ticks: int, wmesg: str = "nanslp") -> int:
    """nanosleep: sleep ``ticks`` clock ticks at PWAIT (long enough and the process
    becomes a candidate for swapout)."""
    lt = curlocal()
    chan = lt.td.addr("td_wmesg")      # a private channel nobody wakes: only the timeout
    return tsleep(chan, PWAIT, wmesg, max(int(ticks), 1))


def mmap_anon(npages: int) -> int:
    """Anonymous memory: a new object mapped somewhere free. Returns the address."""
    mtx_lock(kern_globals.G.Giant)
    obj = vm_object_allocate(OBJT_DEFAULT, npages)
    rv, addr = vm_map_find(curproc().p_vmspace.vm_map, obj, 0, USER_BASE, npages * PAGE)
    mtx_unlock(kern_globals.G.Giant)
    if rv != KERN_SUCCESS:
        md.panic(f"mmap: no space for {npages} pages")
    return addr


def munmap(addr: int, npages: int) -> None:
    mtx_lock(kern_globals.G.Giant)
    vm_map_remove(curproc().p_vmspace.vm_map, addr, addr + npages * PAGE)
    mtx_unlock(kern_globals.G.Giant)


def _pattern(pid: int, va: int, gen: int) -> bytes:
    return pid.to_bytes(4, "little") + (va // PAGE).to_bytes(4, "little") + \
        gen.to_bytes(8, "little")


def touch(va: int, write: bool, gen: int, check: bool = True, owner_pid: int = 0) -> bool:
    """Access the user page at ``va``: write the pattern for ``gen``, or read and (with
    ``check``) verify it. False if the page could not be brought in."""
    mtx_lock(kern_globals.G.Giant)
    map_ = curproc().p_vmspace.vm_map
    rv, m = vm_fault_page(map_, va, VM_PROT_WRITE if write else VM_PROT_READ, hold=True)
    mtx_unlock(kern_globals.G.Giant)
    if rv != KERN_SUCCESS or m is None:
        md.pcpu.count("user_faults_failed")
        return False
    paddr = m.phys_addr * PAGE
    pid = owner_pid or getpid()
    if write:
        memory.phys_write(paddr, _pattern(pid, va, gen))
    else:
        got = memory.phys_read(paddr, 16)
        if check and got != _pattern(pid, va, gen):
            md.pcpu.note_violation(f"user page {va:#x} of pid {pid} lost its contents "
                                   f"(generation {gen})")
    vm_page_release(m)
    return True


def sys_useracc(addr: int, length: int, rw: int) -> int:
    return useracc(addr, length, rw)


def sys_physio(addr: int, length: int) -> int:
    """A raw read into a user buffer, as physio did: check the buffer, wire it for the
    transfer, unwire it."""
    if not useracc(addr, length, VM_PROT_WRITE):
        return -14                                   # EFAULT
    mtx_lock(kern_globals.G.Giant)
    vslock(addr, length)
    md.cpu_work(100)                                 # the transfer
    vsunlock(addr, length)
    mtx_unlock(kern_globals.G.Giant)
    md.pcpu.count("physio")
    return 0


def peek_uarea(pid: int) -> int:
    """What ps/procfs did to read another process's U-area: find it, hold it in memory
    (PHOLD swaps it in), check the address, read, release. Returns 0, or -ESRCH."""
    G = kern_globals.G
    mtx_lock(G.Giant)
    p = pfind(pid)
    if p is None:
        mtx_unlock(G.Giant)
        return -ESRCH
    # Skip embryonic processes, as sysctl_kern_proc did: a process in creation is on the
    # pid hash, but its U-area is filled in only at the end of fork1 (a recycled struct
    # proc still shows its previous owner there).
    mtx_lock_spin(G.sched_lock)
    embryonic = p.p_state == PRS.PRS_NEW
    mtx_unlock_spin(G.sched_lock)
    if embryonic or p.p_flag & (P.P_SYSTEM | P.P_WEXIT):
        PROC_UNLOCK(p)
        mtx_unlock(G.Giant)
        return -ESRCH
    md.pcpu.count("phold_calls")
    _PHOLD(p)
    mtx_lock_spin(G.sched_lock)
    inmem = p.p_sflag & PS.PS_INMEM
    mtx_unlock_spin(G.sched_lock)
    PROC_UNLOCK(p)
    up = p.p_uarea
    if not inmem:
        # PHOLD promised the U-area in memory and did not keep it: finding F1.
        md.pcpu.note_finding("F1", f"PHOLD of pid {pid} returned while the process was "
                             f"still being swapped in (PS_INMEM clear)")
    elif kernacc(up, PAGE, VM_PROT_READ):
        ki_pid = memory.kread_u64(up + KI_PID)
        if ki_pid != pid or memory.kread_u64(up + KI_CHECK) != ki_check(pid):
            md.pcpu.note_violation(f"U-area of pid {pid} reads pid {ki_pid}: lost or "
                                   f"corrupted across swap")
        md.pcpu.count("uarea_reads")
    else:
        md.pcpu.note_violation(f"kernacc refused the U-area of pid {pid}")
    PRELE(p)
    mtx_unlock(G.Giant)
    return 0


def list_procs() -> list[tuple[int, int, int]]:
    """(pid, p_sflag, p_swtime) of every process on allproc but the embryonic ones: what
    ps and top walk (top shows a swapped-out process that wants to run as "<RUN>")."""
    G = kern_globals.G
    out = []
    sx_slock(G.allproc_lock)
    for p in FOREACH_PROC_IN_SYSTEM():
        mtx_lock_spin(G.sched_lock)
        pid, sflag, swtime, state = p.load("p_pid", "p_sflag", "p_swtime", "p_state")
        mtx_unlock_spin(G.sched_lock)
        if state != PRS.PRS_NEW:
            out.append((pid, sflag, swtime))
    sx_sunlock(G.allproc_lock)
    return out


__all__ = ["compute", "getpid", "fork", "exit", "wait", "sleep_ticks", "mmap_anon",
           "munmap", "touch", "sys_useracc", "sys_physio", "peek_uarea", "list_procs"]
