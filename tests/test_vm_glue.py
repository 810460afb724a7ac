"""vm_glue.py against the real server: each ported function of FreeBSD 5.0's vm_glue.c,
run in user processes and kernel threads of a small machine (2 CPUs, no user land, no
lock load), and the fail points of its race guards.

How a test works: the scenario code (kernel side, here and in vmscenarios.py) runs in the
simulated CPUs and reports every check as a kernel counter, ``t_ok_<name>`` or
``t_bad_<name>``; the test asserts, on the host, that each expected check passed as often
as it ran and that none failed, and that the machine's own counters (swapouts,
faultins_swapper, ...) and invariants agree. A scenario that stalls runs into its
``wait_until`` deadline or the run's duration, so nothing can hang.

Several tests read one machine run (module-scoped fixtures): the basic machine runs the
U-area, access-check, wiring, fork and reap scenarios side by side, and the swap machine
runs swapout, PHOLD and the swapper in one story, because a machine run is what costs.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import pytest

import helpers
import vmscenarios as vs
from helpers import describe, expect_panic, expect_shutdown
from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock, mtx_lock_spin, mtx_unlock, mtx_unlock_spin
from smp.kernel.kern.kern_synch import wakeup
from smp.kernel.kern.kern_proc import FIRST_THREAD_IN_PROC, FOREACH_PROC_IN_SYSTEM
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.proc import PRS, PS, TDI
from smp.kernel.sys.param import ESRCH
from smp.kernel.vm.vm import (PG_BUSY, PQ_FREE, RFFDG, RFMEM, RFPROC, VM_PAGE_BITS_ALL,
                              VM_PROT_ALL, VM_PROT_READ, VM_PROT_WRITE, VM_SWAP_IDLE,
                              VM_SWAP_NORMAL)
from smp.kernel.vm.vm_map import VM_MAX_KERNEL_ADDRESS, VM_MAXUSER_ADDRESS, VM_MIN_KERNEL_ADDRESS

pytestmark = pytest.mark.long

PAGE = param.PAGE_SIZE
RW = VM_PROT_READ | VM_PROT_WRITE

# A small quiet machine: 2 CPUs, nothing running but the kernel's own threads and the
# scenario. run.duration is only the deadline; every scenario ends the run itself.
QUIET = ["machine.cpus=2", "workload.kthreads=0", "user.procs_per_cpu=0"]


def quiet(*more: str, duration: float = 30) -> list[str]:
    return [*QUIET, f"run.duration={duration}", *more]


def boot(tmp_path: pathlib.Path, overrides: list[str], sysinits: list[Any]) -> Any:
    return helpers.run(overrides, [vs.publish(), *sysinits], tmp_path)


def boot_local(tmp_path: pathlib.Path, overrides: list[str], sysinits: list[Any]) -> Any:
    """The same on a one-CPU machine in this process (helpers.run_local): for scenarios
    that call vm_glue's functions and check what they did, not how CPUs race in them."""
    return helpers.run_local(overrides, [vs.publish(), *sysinits], tmp_path)


def bad_checks(k: dict[str, int]) -> dict[str, int]:
    return {n: v for n, v in k.items() if n.startswith("t_bad_")}


def check_details(res: Any) -> list[str]:
    return [f["summary"] for f in res.report.get("findings", []) if f.get("detector") == "test"]


def assert_checks(res: Any, *names: str, times: int = 1) -> dict[str, int]:
    """The run ended by the scenario, cleanly; each named check passed ``times`` times
    and no check failed. Returns the kernel counters."""
    k = expect_shutdown(res)
    assert not bad_checks(k), (f"failed checks {bad_checks(k)}: {check_details(res)}; "
                               f"{describe(res)}")
    missing = {n: k.get(f"t_ok_{n}", 0) for n in names if k.get(f"t_ok_{n}", 0) != times}
    assert not missing, f"checks that did not pass {times}x: {missing}; {describe(res)}"
    return k


# =============================================================================================
# The basic machine: kernacc, vm_proc_new/dispose, vm_init_limits (a kernel thread on cpu1);
# useracc, vslock/vsunlock, vm_forkproc, vm_waitproc (a user process on cpu0); then the proc
# zone's real vm_proc_dispose path (a user process on cpu1, after the other two).
# =============================================================================================
def kern_part() -> None:
    from smp.kernel.kern.kern_mutex import mtx_lock, mtx_unlock
    from smp.kernel.sys.proc import struct_proc
    from smp.kernel.sys.user import (DFLDSIZ, DFLSSIZ, MAXDSIZ, MAXSSIZ, RLIM_INFINITY,
                                     RLIMIT_DATA, RLIMIT_RSS, RLIMIT_STACK, p_rlimit, plimit_new)
    from smp.kernel.vm import vm_page as vp
    from smp.kernel.vm.vm_glue import kernacc, vm_init_limits, vm_proc_dispose, vm_proc_new
    G = kern_globals.G
    check = vs.check

    # -- kernacc -----------------------------------------------------------------------------
    up0 = G.proc0.p_uarea
    check("kernacc_uarea_read", kernacc(up0, PAGE, VM_PROT_READ) == 1)
    check("kernacc_uarea_rw", kernacc(up0, PAGE, RW) == 1)
    check("kernacc_uarea_all", kernacc(up0, PAGE, VM_PROT_ALL) == 1)
    check("kernacc_uarea_inner", kernacc(up0 + 100, 16, VM_PROT_READ) == 1)
    check("kernacc_user_address", kernacc(0x08048000, PAGE, VM_PROT_READ) == 0)
    check("kernacc_unmapped_top", kernacc(VM_MAX_KERNEL_ADDRESS - 4 * PAGE, PAGE,
                                          VM_PROT_READ) == 0)
    check("kernacc_beyond_kernel_map", kernacc(VM_MAX_KERNEL_ADDRESS, PAGE,
                                               VM_PROT_READ) == 0)
    # a range that starts in the U-area and runs on far past every allocation
    check("kernacc_runs_off_the_end", kernacc(up0, VM_MAX_KERNEL_ADDRESS - 8 * PAGE - up0,
                                              VM_PROT_READ) == 0)

    # -- vm_proc_new / vm_proc_dispose on a fresh struct proc --------------------------------
    mtx_lock(G.Giant)
    p = struct_proc.new()
    vm_proc_new(p)
    up, upobj = p.p_uarea, p.p_upages_obj
    check("proc_new_kva", VM_MIN_KERNEL_ADDRESS <= up < VM_MAX_KERNEL_ADDRESS
          and up % PAGE == 0, f"uarea {up:#x}")
    check("proc_new_object", upobj is not None
          and upobj.resident_page_count == param.UAREA_PAGES)
    vp.vm_page_lock_queues()
    m = vp.vm_page_lookup(upobj, 0)
    wire, valid, flags = m.load("wire_count", "valid", "flags")
    vp.vm_page_unlock_queues()
    check("proc_new_wired", wire == 1, f"wire_count {wire}")
    check("proc_new_valid_not_busy", valid == VM_PAGE_BITS_ALL and not flags & PG_BUSY,
          f"valid {valid:#x} flags {flags:#x}")
    frame = memory.kextract(up)
    check("proc_new_mapped", frame != -1 and frame == m.phys_addr,
          f"kextract {frame} frame {m.phys_addr}")
    check("proc_new_kernacc", kernacc(up, PAGE, RW) == 1)
    memory.kwrite_u64(up + 512, 0x5EED_F00D)
    check("proc_new_readwrite", memory.kread_u64(up + 512) == 0x5EED_F00D)

    vm_proc_dispose(p)
    check("proc_dispose_unmapped", memory.kextract(up) == -1)
    check("proc_dispose_kernacc", kernacc(up, PAGE, VM_PROT_READ) == 0)
    queue, wire, obj = m.load("queue", "wire_count", "object")
    check("proc_dispose_page_freed", queue == PQ_FREE and wire == 0 and not obj,
          f"queue {queue} wire {wire} object {obj}")
    mtx_unlock(G.Giant)
    p.free()

    # -- vm_init_limits: what the SYSINIT gave proc0, and a call on a fresh plimit -----------
    rl = p_rlimit(G.proc0)
    check("limits_stack", (rl[RLIMIT_STACK].rlim_cur, rl[RLIMIT_STACK].rlim_max)
          == (DFLSSIZ, MAXSSIZ))
    check("limits_data", (rl[RLIMIT_DATA].rlim_cur, rl[RLIMIT_DATA].rlim_max)
          == (DFLDSIZ, MAXDSIZ))
    rss_cur, rss_max = rl[RLIMIT_RSS].rlim_cur, rl[RLIMIT_RSS].rlim_max
    vs.value("proc0_rss_cur", rss_cur)
    check("limits_rss_max", rss_max == RLIM_INFINITY)
    check("limits_rss_cur", rss_cur % PAGE == 0
          and 512 * PAGE <= rss_cur <= param.physmem_pages * PAGE, f"{rss_cur}")
    fake = struct_proc.new(p_limit=plimit_new())
    before = vp.cnt.v_free_count
    vm_init_limits(fake)
    after = vp.cnt.v_free_count
    frl = p_rlimit(fake)
    cur = frl[RLIMIT_RSS].rlim_cur
    lo, hi = sorted((max(before, 512), max(after, 512)))
    check("limits_rss_tracks_free_memory", lo * PAGE <= cur <= hi * PAGE,
          f"{cur} not in [{lo}, {hi}] pages")
    check("limits_fresh_stack", frl[RLIMIT_STACK].rlim_cur == DFLSSIZ)
    # Free the scratch limits again: the server's end-of-run field sums overflow with two
    # live plimits holding RLIM_INFINITY (reported as a bug of smp/machine/objects.py).
    from smp.kernel.sys.user import RLIM_NLIMITS
    lim = fake.p_limit
    for i in range(RLIM_NLIMITS):
        frl[i].free()
    lim.free()
    fake.free()
    vs.part_done(3)


def user_part() -> None:
    from smp.kernel.kern.kern_thread import curproc
    from smp.kernel.sys.user import (KI_CHECK, KI_PID, PSTAT_ENDZERO, PSTAT_STARTCOPY,
                                     PSTAT_STARTZERO, U_SIGACTS, U_STATS, ki_check)
    from smp.kernel.userland import libc
    from smp.kernel.vm.vm_glue import useracc, vslock, vsunlock
    from smp.kernel.vm.vm_map import vm_map_max
    check = vs.check
    G = kern_globals.G
    me = libc.getpid()
    p = curproc()
    pv = p.p_vmspace

    # -- useracc -----------------------------------------------------------------------------
    base = libc.mmap_anon(4)
    for i in range(4):
        libc.touch(base + i * PAGE, True, 1)
    check("useracc_mapped", useracc(base, 4 * PAGE, RW) == 1)
    check("useracc_mapped_inner", useracc(base + PAGE + 100, 200, VM_PROT_READ) == 1)
    check("useracc_syscall", libc.sys_useracc(base, 4 * PAGE, VM_PROT_WRITE) == 1)
    check("useracc_hole_after", useracc(base + 4 * PAGE, PAGE, VM_PROT_READ) == 0)
    check("useracc_straddles_end", useracc(base + 3 * PAGE, 2 * PAGE, VM_PROT_READ) == 0)
    mx = vm_map_max(pv.vm_map)
    check("useracc_map_max", mx == VM_MAXUSER_ADDRESS, f"{mx:#x}")
    check("useracc_beyond_max", useracc(mx - PAGE, 2 * PAGE, VM_PROT_READ) == 0)
    check("useracc_at_max", useracc(mx, 1, VM_PROT_READ) == 0)
    check("useracc_kernel_address", useracc(VM_MIN_KERNEL_ADDRESS, PAGE, VM_PROT_READ) == 0)
    # wraparound: (vm_offset_t)addr + len < addr. A negative length is what wraps here
    # (Python integers do not); a mapped start would pass the protection check.
    check("useracc_wrap_negative_len", useracc(base + PAGE, -PAGE, VM_PROT_READ) == 0)
    check("useracc_wrap_32bit", useracc(0xFFFFF000, 0x2000, VM_PROT_READ) == 0)

    # -- vslock / vsunlock: the buffer's pages wired while locked, unwired after -------------
    check("vslock_unwired_before", vs.wired_pages(base, 4) == 0)
    mtx_lock(G.Giant)
    vslock(base + 10, 3 * PAGE - 20)                 # pages 0, 1, 2 of the buffer
    mtx_unlock(G.Giant)
    n = vs.wired_pages(base, 4)
    vs.value("vslock_wired", n)
    check("vslock_wired", n == 3, f"{n} pages wired")
    mtx_lock(G.Giant)
    vsunlock(base + 10, 3 * PAGE - 20)
    mtx_unlock(G.Giant)
    n = vs.wired_pages(base, 4)
    check("vsunlock_unwired", n == 0, f"{n} pages still wired")
    # vslock faults in what was never touched
    b2 = libc.mmap_anon(2)
    check("vslock_untouched_not_resident", vs.resident_pages(b2, 2) == 0)
    mtx_lock(G.Giant)
    vslock(b2, 2 * PAGE)
    mtx_unlock(G.Giant)
    check("vslock_faults_in", vs.resident_pages(b2, 2) == 2 and vs.wired_pages(b2, 2) == 2)
    mtx_lock(G.Giant)
    vsunlock(b2, 2 * PAGE)
    mtx_unlock(G.Giant)
    check("vsunlock_faulted", vs.wired_pages(b2, 2) == 0 and vs.resident_pages(b2, 2) == 2)
    check("physio", libc.sys_physio(base, 4 * PAGE) == 0 and vs.wired_pages(base, 4) == 0)
    check("physio_efault", libc.sys_physio(VM_MAXUSER_ADDRESS - PAGE, PAGE) == -14)
    for i in range(4):                       # contents unharmed by wiring (else a violation)
        libc.touch(base + i * PAGE, False, 1)

    # -- vm_forkproc, RFPROC: the child gets a copy ------------------------------------------
    # marks in the parent's pstats: the copied part must reach the child, the zeroed not
    memory.kwrite(p.p_stats + (PSTAT_STARTCOPY - U_STATS), b"copy-me!")
    memory.kwrite(p.p_stats + (PSTAT_STARTZERO - U_STATS), b"zero-me!")
    limit = p.p_limit

    def child_copy() -> None:
        c = curproc()
        cv = c.p_vmspace
        up = c.p_uarea
        check("fork_own_vmspace", cv is not None and cv != pv)
        check("fork_child_refcnt", cv.vm_refcnt == 1, f"{cv.vm_refcnt}")
        check("fork_parent_refcnt", pv.vm_refcnt == 1, f"{pv.vm_refcnt}")
        check("fork_pages_copied", all(libc.touch(base + i * PAGE, False, 1, owner_pid=me)
                                       for i in range(4)))
        libc.touch(base, True, 2)                     # only in the child's copy
        check("fork_uarea_mapped", vs.uarea_mapped(c) and vs.uarea_wired(c)
              and vs.kstack_mapped(c))
        check("fork_pstats_in_uarea", c.p_stats == up + U_STATS)
        check("fork_sigacts_in_uarea", c.p_sigacts == up + U_SIGACTS)
        check("fork_pstats_copied",
              memory.kread(c.p_stats + (PSTAT_STARTCOPY - U_STATS), 8) == b"copy-me!")
        check("fork_pstats_zeroed",
              memory.kread(c.p_stats, PSTAT_ENDZERO - PSTAT_STARTZERO) ==
              bytes(PSTAT_ENDZERO - PSTAT_STARTZERO))
        check("fork_kinfo", memory.kread_u64(up + KI_PID) == libc.getpid()
              and memory.kread_u64(up + KI_CHECK) == ki_check(libc.getpid()))
        check("fork_limits_inherited", c.p_limit == limit)
        libc.exit(7)

    pid = libc.fork(child_copy, "vmt-copy", RFFDG | RFPROC)
    check("fork_wait", libc.wait() == (0, pid, 7))
    check("fork_parent_unchanged", libc.touch(base, False, 1))
    check("fork_parent_vmspace_kept", p.p_vmspace == pv and pv.vm_refcnt == 1)

    # -- RFPROC|RFMEM: the child shares the vmspace; then rfork without RFPROC unshares -----
    def child_shared() -> None:
        c = curproc()
        check("rfmem_same_vmspace", c.p_vmspace == pv)
        check("rfmem_refcnt", pv.vm_refcnt == 2, f"{pv.vm_refcnt}")
        check("rfmem_sees_parent", libc.touch(base, False, 1, owner_pid=me))
        libc.touch(base + PAGE, True, 5, owner_pid=me)     # a write the parent will see
        check("unshare_returns_0", libc.fork(lambda: None, "vmt-unshare", RFFDG) == 0)
        nv = c.p_vmspace
        check("unshare_new_vmspace", nv is not None and nv != pv)
        check("unshare_new_refcnt", nv.vm_refcnt == 1, f"{nv.vm_refcnt}")
        check("unshare_old_refcnt", pv.vm_refcnt == 1, f"{pv.vm_refcnt}")
        check("unshare_copy", libc.touch(base + PAGE, False, 5, owner_pid=me))
        libc.touch(base + PAGE, True, 6, owner_pid=me)     # private now: the parent won't
        libc.exit(0)

    pid = libc.fork(child_shared, "vmt-share", RFFDG | RFPROC | RFMEM)
    check("rfmem_wait", libc.wait() == (0, pid, 0))
    check("rfmem_parent_refcnt_back", pv.vm_refcnt == 1 and pv.vm_exitingcnt == 0,
          f"{pv.vm_refcnt} {pv.vm_exitingcnt}")
    check("rfmem_shared_write_seen", libc.touch(base + PAGE, False, 5))

    # -- no RFPROC, vmspace not shared: nothing to divorce ----------------------------------
    before = md.pcpu.stats.get("rforks_noproc", 0)
    check("noproc_returns_0", libc.fork(lambda: None, "vmt-noop", RFFDG) == 0)
    check("noproc_same_vmspace", p.p_vmspace == pv and pv.vm_refcnt == 1)
    check("noproc_counted", md.pcpu.stats.get("rforks_noproc", 0) == before + 1)

    # -- vm_waitproc via wait: the vmspace goes when refcnt and exitingcnt reach 0 ----------
    def child_sleep_exit() -> None:
        libc.sleep_ticks(5)
        libc.exit(4)

    for shared in (False, True):
        tag = "shared" if shared else "own"
        flags = RFFDG | RFPROC | (RFMEM if shared else 0)
        pid = libc.fork(child_sleep_exit, f"vmt-reap-{tag}", flags)
        c = vs.find_proc(pid)
        cv = c.p_vmspace
        vs.sleep_until(lambda: c.p_state == PRS.PRS_ZOMBIE, f"pid {pid} to exit", 300)
        rc, ex, freed = cv.load("vm_refcnt", "vm_exitingcnt", "vm_freed")
        want = (1, 1, 0) if shared else (0, 1, 0)
        check(f"zombie_vmspace_{tag}", (rc, ex, freed) == want and c.p_vmspace == cv,
              f"refcnt {rc} exitingcnt {ex} freed {freed}")
        freed0 = md.pcpu.stats.get("vmspaces_freed", 0)
        check(f"reap_wait_{tag}", libc.wait() == (0, pid, 4))
        delta = md.pcpu.stats.get("vmspaces_freed", 0) - freed0
        check(f"reap_vmspace_freed_{tag}", delta == (0 if shared else 1), f"freed {delta}")
        check(f"reap_p_vmspace_cleared_{tag}", c.p_vmspace is None)
    check("reap_shared_survives", pv.load("vm_refcnt", "vm_exitingcnt", "vm_freed") ==
          [1, 0, 0] and libc.touch(base, False, 1))
    vs.part_done(3)
    libc.exit(0)


ZONE_CHILDREN = 20


def zone_part() -> None:
    """After the other two parts: fork ZONE_CHILDREN children that live at once (the zone
    makes that many procs), reap them all: the zone keeps PROC_ZONE_CACHE and really frees
    the rest (proc_fini -> vm_proc_dispose), whose U-areas are then unmapped."""
    from smp.kernel.kern.kern_proc import PROC_ZONE_CACHE
    from smp.kernel.userland import libc
    t = vs.shared()
    vs.sleep_until(lambda: t.v_done >= 2, "the other parts", 2000)
    uareas = []
    for _ in range(ZONE_CHILDREN):
        pid = libc.fork(lambda: (libc.sleep_ticks(20), libc.exit(0)), "vmt-zone-child")
        uareas.append(vs.find_proc(pid).p_uarea)
    disposed0 = md.pcpu.stats.get("procs_disposed", 0)
    for _ in range(ZONE_CHILDREN):
        err, _pid, _st = libc.wait()
        vs.check("zone_wait", err == 0)
    disposed = md.pcpu.stats.get("procs_disposed", 0) - disposed0
    unmapped = sum(1 for up in uareas if memory.kextract(up) == -1)
    vs.value("zone_disposed", disposed)
    vs.check("zone_disposed", disposed >= ZONE_CHILDREN - PROC_ZONE_CACHE, f"{disposed}")
    vs.check("zone_dispose_unmaps", unmapped == disposed, f"{unmapped} != {disposed}")
    vs.part_done(3)
    libc.exit(0)


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("basic")
    return boot_local(tmp, quiet("machine.memory=8M", duration=60),
                      [vs.boot_kthread("vmt-kern", kern_part),
                       vs.boot_fork("vmt-user", user_part),
                       vs.boot_fork("vmt-zone", zone_part)])


@pytest.mark.timeout(90)
def test_basic_machine_ok(basic: Any) -> None:
    k = expect_shutdown(basic)
    assert not bad_checks(k), (f"failed checks {bad_checks(k)}: {check_details(basic)}; "
                               f"{describe(basic)}")
    assert basic.report["invariants"] == [] and k["checksum_errors"] == 0


@pytest.mark.timeout(90)
def test_kernacc(basic: Any) -> None:
    k = assert_checks(basic, "kernacc_uarea_read", "kernacc_uarea_rw", "kernacc_uarea_all",
                      "kernacc_uarea_inner", "kernacc_user_address", "kernacc_unmapped_top",
                      "kernacc_beyond_kernel_map", "kernacc_runs_off_the_end")
    assert k["kernacc"] >= 8


@pytest.mark.timeout(90)
def test_useracc(basic: Any) -> None:
    k = assert_checks(basic, "useracc_mapped", "useracc_mapped_inner", "useracc_syscall",
                      "useracc_hole_after", "useracc_straddles_end", "useracc_map_max",
                      "useracc_beyond_max", "useracc_at_max", "useracc_kernel_address",
                      "useracc_wrap_negative_len", "useracc_wrap_32bit")
    assert k["useracc"] >= 11


@pytest.mark.timeout(90)
def test_vslock_vsunlock(basic: Any) -> None:
    k = assert_checks(basic, "vslock_unwired_before", "vslock_wired", "vsunlock_unwired",
                      "vslock_untouched_not_resident", "vslock_faults_in", "vsunlock_faulted",
                      "physio", "physio_efault")
    assert k["t_val_vslock_wired"] == 3
    assert k["vslock"] == 3 and k["physio"] == 1


@pytest.mark.timeout(90)
def test_vm_proc_new_and_dispose(basic: Any) -> None:
    assert_checks(basic, "proc_new_kva", "proc_new_object", "proc_new_wired",
                  "proc_new_valid_not_busy", "proc_new_mapped", "proc_new_kernacc",
                  "proc_new_readwrite", "proc_dispose_unmapped", "proc_dispose_kernacc",
                  "proc_dispose_page_freed")


@pytest.mark.timeout(90)
def test_vm_proc_dispose_from_the_proc_zone(basic: Any) -> None:
    from smp.kernel.kern.kern_proc import PROC_ZONE_CACHE
    k = assert_checks(basic, "zone_disposed", "zone_dispose_unmaps")
    assert k["t_ok_zone_wait"] == ZONE_CHILDREN
    assert k["t_val_zone_disposed"] >= ZONE_CHILDREN - PROC_ZONE_CACHE
    assert k["procs_disposed"] >= k["t_val_zone_disposed"]


@pytest.mark.timeout(90)
def test_vm_init_limits(basic: Any) -> None:
    k = assert_checks(basic, "limits_stack", "limits_data", "limits_rss_max",
                      "limits_rss_cur", "limits_rss_tracks_free_memory", "limits_fresh_stack")
    # 8M of memory: well above the 2 MB floor, so proc0's RSS limit followed free memory
    assert 512 * PAGE < k["t_val_proc0_rss_cur"] <= 2048 * PAGE


@pytest.mark.timeout(90)
def test_vm_forkproc_rfproc(basic: Any) -> None:
    assert_checks(basic, "fork_own_vmspace", "fork_child_refcnt", "fork_parent_refcnt",
                  "fork_pages_copied", "fork_uarea_mapped", "fork_pstats_in_uarea",
                  "fork_sigacts_in_uarea", "fork_pstats_copied", "fork_pstats_zeroed",
                  "fork_kinfo", "fork_limits_inherited", "fork_wait", "fork_parent_unchanged",
                  "fork_parent_vmspace_kept")


@pytest.mark.timeout(90)
def test_vm_forkproc_rfmem_shares_the_vmspace(basic: Any) -> None:
    k = assert_checks(basic, "rfmem_same_vmspace", "rfmem_refcnt", "rfmem_sees_parent",
                      "rfmem_wait", "rfmem_parent_refcnt_back", "rfmem_shared_write_seen")
    assert k["forks_rfmem"] >= 2


@pytest.mark.timeout(90)
def test_vm_forkproc_without_rfproc(basic: Any) -> None:
    k = assert_checks(basic, "unshare_returns_0", "unshare_new_vmspace", "unshare_new_refcnt",
                      "unshare_old_refcnt", "unshare_copy", "noproc_returns_0",
                      "noproc_same_vmspace", "noproc_counted")
    assert k["rforks_noproc"] == 2


@pytest.mark.timeout(90)
def test_vm_waitproc(basic: Any) -> None:
    k = assert_checks(basic, "zombie_vmspace_own", "reap_wait_own", "reap_vmspace_freed_own",
                      "reap_p_vmspace_cleared_own", "zombie_vmspace_shared",
                      "reap_wait_shared", "reap_vmspace_freed_shared",
                      "reap_p_vmspace_cleared_shared", "reap_shared_survives")
    assert k["waits"] >= 4 + ZONE_CHILDREN and k["exits"] >= k["waits"]


# =============================================================================================
# The swap machine: swapout (a real swapout_procs(VM_SWAP_NORMAL)), faultin through PHOLD,
# and the swapper (scheduler) bringing a woken sleeper back in.
# =============================================================================================
MARK = 0xC0FFEE_0DDBA11
LONG_SLEEP = 3000             # ticks: longer than any scenario; the driver wakes it early


def sleeper(report_back: bool) -> Any:
    """A user process that writes 4 pages, publishes its pid and sleeps (at PWAIT, as
    nanosleep does) until the driver wakes it (``v_aux``'s channel) or LONG_SLEEP ticks
    pass. If ``report_back``, it checks on waking that it is in memory, was woken by the
    driver and has its pages intact."""
    def main() -> None:
        from smp.kernel.kern.kern_synch import tsleep
        from smp.kernel.kern.kern_thread import curproc
        from smp.kernel.sys.param import EWOULDBLOCK, PWAIT
        from smp.kernel.sys.user import RU_NSWAP, U_STATS
        from smp.kernel.userland import libc
        t = vs.shared()
        base = libc.mmap_anon(4)
        for i in range(4):
            libc.touch(base + i * PAGE, True, 1)
        t.v_pid = libc.getpid()
        rv = tsleep(t.addr("v_aux"), PWAIT, "vmtslp", LONG_SLEEP)
        if report_back:
            p = curproc()
            vs.check("sleeper_back_in_memory", vs.sflag(p) & PS.PS_INMEM)
            vs.check("sleeper_woken_by_the_driver", rv != EWOULDBLOCK and t.v_phase == 1,
                     f"tsleep {rv}, phase {t.v_phase}")
            vs.check("sleeper_pages_intact", all(libc.touch(base + i * PAGE, False, 1)
                                                 for i in range(4)))
            nswap = memory.kread_u64(p.p_stats + (RU_NSWAP - U_STATS))
            vs.check("sleeper_nswap", nswap == 2, f"ru_nswap {nswap}")
            vs.done()
        libc.exit(0)
    return main


def swap_driver() -> None:
    from smp.kernel.kern.kern_proc import PHOLD, PRELE
    from smp.kernel.sys.user import KI_CHECK, KI_PID, RU_NSWAP, U_STATS, ki_check
    check = vs.check
    G = kern_globals.G
    t = vs.shared()
    helpers.wait_until(lambda: t.v_pid != 0, "the sleeper to start")
    pid = t.v_pid
    p = vs.find_proc(pid)
    helpers.wait_until(lambda: vs.slptime(p) >= 2 and vs.is_sleeping(p),
                       "the sleeper to sleep 2 s")
    up = p.p_uarea
    memory.kwrite_u64(up + 2048, MARK)             # a mark in the U-area, to find after swap

    # -- swapout: the sleeper is the only candidate -----------------------------------------
    n = vs.swapout_procs_now(VM_SWAP_NORMAL)
    check("swapout_one", n == 1, f"{n} swapped out")
    fl = vs.sflag(p)
    check("swapout_flags", not fl & (PS.PS_INMEM | PS.PS_SWAPPING | PS.PS_SWAPPINGIN),
          f"p_sflag {fl:#x}")
    check("swapout_uarea_unmapped", not vs.uarea_mapped(p))
    check("swapout_uarea_unwired", not vs.uarea_wired(p))
    check("swapout_kstack_unmapped", not vs.kstack_mapped(p))
    inhib = vs.thread_inhibitors(p)
    check("swapout_thread_swapped", inhib & TDI.TDI_SWAPPED and inhib & TDI.TDI_SLEEPING,
          f"inhibitors {inhib:#x}")
    check("swapout_swrss", p.p_vmspace.vm_swrss == 4, f"{p.p_vmspace.vm_swrss}")
    # let its U-area and kernel stack really go to the swap device
    npg = vs.pageout_proc_pages(p)
    check("pageout_uarea_kstack", npg == param.UAREA_PAGES + param.KSTACK_PAGES, f"{npg}")

    # -- PHOLD: faultin brings it back, from swap, with its contents -------------------------
    phold0 = md.pcpu.stats.get("faultins_phold", 0)
    mtx_lock(G.Giant)
    PHOLD(p)
    fl = vs.sflag(p)
    check("phold_inmem", fl & PS.PS_INMEM and not fl & (PS.PS_SWAPPING | PS.PS_SWAPPINGIN),
          f"p_sflag {fl:#x}")
    check("phold_mapped_wired", vs.uarea_mapped(p) and vs.uarea_wired(p)
          and vs.kstack_mapped(p))
    check("phold_uarea_intact", memory.kread_u64(up + 2048) == MARK
          and memory.kread_u64(up + KI_PID) == pid and memory.kread_u64(up + KI_CHECK) == ki_check(pid))
    check("phold_nswap", memory.kread_u64(p.p_stats + (RU_NSWAP - U_STATS)) == 1)
    inhib = vs.thread_inhibitors(p)
    check("phold_still_asleep", inhib & TDI.TDI_SLEEPING and not inhib & TDI.TDI_SWAPPED,
          f"inhibitors {inhib:#x}")
    # a held process is not swapped out
    check("held_not_swapped", vs.swapout_procs_now(VM_SWAP_NORMAL) == 0
          and vs.sflag(p) & PS.PS_INMEM)
    PRELE(p)
    mtx_unlock(G.Giant)
    check("phold_counted", md.pcpu.stats.get("faultins_phold", 0) == phold0 + 1)

    # -- out again, and left out: bringing it back when it wakes is the swapper's job -------
    check("swapout_again", vs.swapout_procs_now(VM_SWAP_NORMAL) == 1
          and not vs.sflag(p) & PS.PS_INMEM)
    vs.pageout_proc_pages(p)
    check("driver_before_wakeup", vs.is_sleeping(p), "the sleeper woke too early")
    # wake it: setrunnable finds it swapped out and asks the swapper (PS_SWAPINREQ)
    t.v_phase = 1
    check("driver_woke_one", wakeup(t.addr("v_aux")) == 1)
    vs.done()


@pytest.fixture(scope="module")
def swap(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("swap")
    return boot(tmp, quiet("machine.memory=8M", "vm.swap_idle_threshold1=1"),
                [vs.boot_fork("vmt-sleeper", sleeper(True), cpu=1),
                 vs.boot_kthread("vmt-driver", swap_driver, cpu=0),
                 vs.boot_kthread("vmt-coord", vs.coordinator(2, 1500, "the swap story"),
                                 cpu=0)])


@pytest.mark.timeout(90)
def test_swapout_via_swapout_procs(swap: Any) -> None:
    k = assert_checks(swap, "swapout_one", "swapout_flags", "swapout_uarea_unmapped",
                      "swapout_uarea_unwired", "swapout_kstack_unmapped",
                      "swapout_thread_swapped", "swapout_swrss", "swapout_again",
                      "pageout_uarea_kstack", "driver_before_wakeup", "driver_woke_one")
    assert k["swapouts"] == 2
    assert k["pages_swapped_out"] >= 2 * (param.UAREA_PAGES + param.KSTACK_PAGES)


@pytest.mark.timeout(90)
def test_faultin_via_phold(swap: Any) -> None:
    k = assert_checks(swap, "phold_inmem", "phold_mapped_wired", "phold_uarea_intact",
                      "phold_nswap", "phold_still_asleep", "held_not_swapped", "phold_counted")
    assert k["faultins_phold"] == 1
    assert k["pages_swapped_in"] >= 2 * (param.UAREA_PAGES + param.KSTACK_PAGES)
    assert k["checksum_errors"] == 0


@pytest.mark.timeout(90)
def test_scheduler_swaps_in_a_woken_sleeper(swap: Any) -> None:
    k = assert_checks(swap, "sleeper_back_in_memory", "sleeper_woken_by_the_driver",
                      "sleeper_pages_intact", "sleeper_nswap")
    assert k["faultins_swapper"] >= 1
    assert k["swapins"] == k["faultins_swapper"] + k["faultins_phold"] == 2


# =============================================================================================
# The sysctls vm.swap_idle_threshold1/2, from the config.
# =============================================================================================
def threshold_driver(thr1: int, thr2: int) -> Any:
    def run() -> None:
        from smp.kernel.vm import vm_glue
        check = vs.check
        t = vs.shared()
        check("sysctl_threshold1", vm_glue.swap_idle_threshold1 == thr1,
              f"{vm_glue.swap_idle_threshold1}")
        check("sysctl_threshold2", vm_glue.swap_idle_threshold2 == thr2,
              f"{vm_glue.swap_idle_threshold2}")
        helpers.wait_until(lambda: t.v_pid != 0, "the sleeper to start")
        p = vs.find_proc(t.v_pid)
        if thr1 > 100:
            # asleep for 3 s and more, far below threshold1: never swapped out
            helpers.wait_until(lambda: vs.slptime(p) >= 3, "the sleeper to sleep 3 s")
            check("t1_normal_keeps", vs.swapout_procs_now(VM_SWAP_NORMAL) == 0)
            check("t1_idle_keeps", vs.swapout_procs_now(VM_SWAP_IDLE | VM_SWAP_NORMAL) == 0)
            check("t1_in_memory", vs.sflag(p) & PS.PS_INMEM)
        else:
            # idle swapping: not before slptime exceeds threshold2, then yes
            helpers.wait_until(lambda: vs.slptime(p) >= thr1 + 1, "the sleeper to sleep")
            n = vs.swapout_procs_now(VM_SWAP_IDLE)
            s = vs.slptime(p)
            check("t2_young_kept", n == 0 and vs.sflag(p) & PS.PS_INMEM, f"{n} at {s}")
            check("t2_young_timing", s <= thr2, f"slptime {s} already > {thr2}")
            helpers.wait_until(lambda: vs.slptime(p) > thr2 + 1, "the sleeper to get idle")
            n = vs.swapout_procs_now(VM_SWAP_IDLE)
            check("t2_idle_swapped", n == 1 and not vs.sflag(p) & PS.PS_INMEM, f"{n}")
        vs.done()
    return run


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("thr1", "thr2"), [(1000, 10), (1, 5)], ids=["threshold1", "threshold2"])
def test_sysctl_swap_idle_thresholds(tmp_path: pathlib.Path, thr1: int, thr2: int) -> None:
    res = boot(tmp_path, quiet("machine.memory=8M", f"vm.swap_idle_threshold1={thr1}",
                               f"vm.swap_idle_threshold2={thr2}"),
               [vs.boot_fork("vmt-sleeper", sleeper(False), cpu=1),
                vs.boot_kthread("vmt-thr", threshold_driver(thr1, thr2), cpu=0),
                vs.boot_kthread("vmt-coord", vs.coordinator(1, 1500, "the threshold test"),
                                cpu=0)])
    names = (["t1_normal_keeps", "t1_idle_keeps", "t1_in_memory"] if thr1 > 100 else
             ["t2_young_kept", "t2_young_timing", "t2_idle_swapped"])
    k = assert_checks(res, "sysctl_threshold1", "sysctl_threshold2", *names)
    assert k["swapouts"] == (0 if thr1 > 100 else 1)


# =============================================================================================
# kernacc/useracc: an illegal rw argument panics.
# =============================================================================================
def illegal_kernacc() -> None:
    from smp.kernel.vm.vm_glue import kernacc
    kernacc(kern_globals.G.proc0.p_uarea, PAGE, 0x10)
    vs.check("kernacc_survived_illegal_rw", False)
    vs.done()


def illegal_useracc() -> None:
    from smp.kernel.userland import libc
    from smp.kernel.vm.vm_glue import useracc
    base = libc.mmap_anon(1)
    useracc(base, PAGE, VM_PROT_ALL + 1)
    vs.check("useracc_survived_illegal_rw", False)
    vs.done()
    libc.exit(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn", ["kernacc", "useracc"])
def test_illegal_rw_panics(tmp_path: pathlib.Path, fn: str) -> None:
    start = (vs.boot_kthread("vmt-illegal", illegal_kernacc, cpu=1) if fn == "kernacc" else
             vs.boot_fork("vmt-illegal", illegal_useracc, cpu=1))
    res = boot(tmp_path, quiet(duration=20),
               [start, vs.boot_kthread("vmt-coord", vs.coordinator(1, 1000, fn), cpu=0)])
    msg = expect_panic(res, f"illegal ``rw'' argument to {fn}")
    assert res.report["panic"]["cpu"] == 1, msg
    assert not res.report["kernel"].get(f"t_bad_{fn}_survived_illegal_rw")


# =============================================================================================
# A map lock's site is its caller's, as FreeBSD's vm_map_lock macro passes LOCK_FILE/LOCK_LINE:
# every user map lock read "locked @ vm/vm_map.py:87", whoever took it.
# =============================================================================================
def map_locked_twice() -> None:
    from smp.kernel.kern.kern_thread import curproc
    from smp.kernel.vm.vm_map import vm_map_lock
    vm_map = curproc().p_vmspace.vm_map
    vm_map_lock(vm_map)
    vm_map_lock(vm_map)                        # a second time: recursed


@pytest.mark.timeout(60)
def test_a_map_lock_is_named_by_the_code_that_took_it(tmp_path: pathlib.Path) -> None:
    res = boot(tmp_path, quiet(duration=20),
               [vs.boot_fork("vmt-maplock", map_locked_twice, cpu=1)])
    first = map_locked_twice.__code__.co_firstlineno
    msg = expect_panic(res, f"user map: recursed on non-recursive lockmgr @ "
                            f"test_vm_glue.py:{first + 5} (first acquired @ "
                            f"test_vm_glue.py:{first + 4})")
    assert "vm_map.py" not in msg, msg


# =============================================================================================
# cpu_switch's fatal trap: a thread put on a run queue with its kernel stack unmapped (what a
# wakeup that misses a swap-out in progress does) traps when it is chosen, and the trap's
# message reads the thread's state after sched_lock went to it: no lockkey finding.
# =============================================================================================
def unmapped_sleeper() -> None:
    from smp.kernel.kern.kern_thread import curproc
    from smp.kernel.userland import libc
    vs.shared().v_pid = curproc().p_pid
    libc.sleep_ticks(100000, "vmtdeep")       # woken by the kernel thread, never by time
    vs.check("unmapped_sleeper_ran", False)    # its stack is gone: it cannot run
    libc.exit(0)


def unmap_and_wake() -> None:
    from smp.kernel.machine.pmap import pmap_swapout_thread
    t = vs.shared()
    vs.nap_until(lambda: t.v_pid, "the sleeper's pid")
    td = FIRST_THREAD_IN_PROC(vs.find_proc(t.v_pid))

    def asleep() -> bool:                     # (read as the kernel does: sched_lock held)
        mtx_lock_spin(kern_globals.G.sched_lock)
        inhibitors = td.td_inhibitors
        mtx_unlock_spin(kern_globals.G.sched_lock)
        return bool(inhibitors & TDI.TDI_SLEEPING)
    vs.nap_until(asleep, "the sleeper asleep")
    mtx_lock(vs.giant())
    pmap_swapout_thread(td)                   # its stack's pages unmapped, PS_INMEM kept
    mtx_unlock(vs.giant())
    wakeup(td.addr("td_wmesg"))               # setrunnable: PS_INMEM, so a run queue
    vs.nap_until(lambda: False, "the trap", max_ticks=200)


@pytest.mark.timeout(60)
def test_a_thread_chosen_with_its_stack_unmapped_traps_without_lockkey_findings(
        tmp_path: pathlib.Path) -> None:
    """The trap's message read td_state, td_inhibitors and p_sflag with sched_lock already
    handed to the next thread: four "unlocked load" lockkey findings in mi_switch at
    every such panic, each a false lead (found by planting a race and hunting it)."""
    res = boot(tmp_path, quiet(duration=20),
               [vs.boot_fork("vmt-sleeper", unmapped_sleeper, cpu=1),
                vs.boot_kthread("vmt-unmap", unmap_and_wake, cpu=1)])
    msg = expect_panic(res, "fatal trap 12 in cpu_switch: the kernel stack of thread "
                            "vmt-sleeper")
    assert "td_inhibitors 0x0" in msg and "p_sflag 0x1" in msg, msg
    lockkey = [f["summary"] for f in res.report["findings"] if f["detector"] == "lockkey"
               and any(s.startswith("kern/kern_synch.py") for s in f["sites"])]
    assert not lockkey, lockkey                # (they were: @ kern/kern_synch.py:182)


# =============================================================================================
# Fail points: each race guard of vm_glue, in force (the default) and switched off.
#
# Each scenario puts the machine in the situation its guard is for, deterministically
# where it can: with the guard in force the run is clean (and the guard's case was met
# and handled); with the fail point on, the run fails: a KASSERT panic, a fatal trap, or
# an invariant violation found by the kernel's own check (subr_invariants).
# =============================================================================================
def fp_p_system() -> list[Any]:
    """Every machine has kernel threads (P_SYSTEM, no vmspace): swapout_procs must not
    look at their p_vmspace."""
    def driver() -> None:
        vs.check("fp_nothing_swapped", vs.swapout_procs_now(VM_SWAP_NORMAL) == 0)
        vs.done()
    return [vs.boot_kthread("vmt-fp", driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(1, 500, "p_system"), cpu=1)]


def fp_safetoswapout() -> list[Any]:
    """A process that is running (on cpu1) the whole time, with threshold1 = 0 so that it
    passes every other test of swapout_procs: its thread is not safe to swap out."""
    def busy() -> None:
        from smp.kernel.userland import libc
        t = vs.shared()
        t.v_pid = libc.getpid()
        while t.v_phase == 0:
            libc.compute(500)
        vs.done()
        libc.exit(0)

    def driver() -> None:
        t = vs.shared()
        helpers.wait_until(lambda: t.v_pid != 0, "the busy process")
        p = vs.find_proc(t.v_pid)
        helpers.wait_until(lambda: md.pcpu.ticks > 150, "a while")
        vs.check("fp_running_kept", vs.swapout_procs_now(VM_SWAP_NORMAL) == 0
                 and vs.sflag(p) & PS.PS_INMEM)
        t.v_phase = 1
        vs.done()
    return [vs.boot_fork("vmt-busy", busy, cpu=1),
            vs.boot_kthread("vmt-fp", driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(2, 1000, "safetoswapout"), cpu=0)]


def _proctree_holder(after_forker: bool) -> Callable[[], None]:
    """Hold proctree_lock (as wait1 or exit1 on another CPU would) until phase 2; taken
    at once (then the boot thread's fork of the forker waits for it), or once the forker
    has started (then the forker's own fork waits for it)."""
    def holder() -> None:
        from smp.kernel.kern.kern_sx import sx_xlock, sx_xunlock
        G = kern_globals.G
        t = vs.shared()
        if after_forker:
            helpers.wait_until(lambda: t.v_pid != 0, "the forker to start")
        sx_xlock(G.proctree_lock)
        t.v_phase = 1
        helpers.wait_until(lambda: t.v_phase >= 2, "the swapout_procs call")
        sx_xunlock(G.proctree_lock)
        vs.done()
    return holder


def _forker() -> None:
    """Fork once proctree_lock is held: fork1 links the child (PRS_NEW) on allproc and
    then sleeps on proctree_lock, without Giant."""
    from smp.kernel.userland import libc
    t = vs.shared()
    t.v_pid = libc.getpid()
    vs.sleep_until(lambda: t.v_phase >= 1, "proctree_lock to be taken", 1000)
    pid = libc.fork(lambda: libc.exit(0), "vmt-newborn")
    vs.check("fp_fork_done", pid > 0 and libc.wait()[1] == pid)
    vs.done()
    libc.exit(0)


def _proc_where(cond: Callable[[Any], bool]) -> Any:
    G = kern_globals.G
    found = None
    sx_slock(G.allproc_lock)
    for p in FOREACH_PROC_IN_SYSTEM():
        if cond(p):
            found = p
    sx_sunlock(G.allproc_lock)
    return found


def _newborn() -> Any:
    return _proc_where(lambda p: p.p_state == PRS.PRS_NEW)


def _fork_on_held_proctree(after_forker: bool, driver: Callable[[], None], max_ticks: int,
                           what: str) -> list[Any]:
    """A holder of proctree_lock on cpu0, a forker on cpu1, ``driver`` on cpu0."""
    return [vs.boot_kthread("vmt-holder", _proctree_holder(after_forker), cpu=0),
            vs.boot_fork("vmt-forker", _forker, cpu=1),
            vs.boot_kthread("vmt-fp", driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(3, max_ticks, what), cpu=0)]


def fp_prs_new() -> list[Any]:
    """A fork asleep in its PRS_NEW window: linked on allproc, no address space yet,
    sleeping on proctree_lock (which another thread holds, as wait1 or exit1 on another
    CPU would) and so without Giant. swapout_procs runs meanwhile."""
    def driver() -> None:
        t = vs.shared()
        helpers.wait_until(lambda: _newborn() is not None, "a process in creation")
        p = _newborn()
        vs.check("fp_newborn_has_no_vmspace", p.p_vmspace is None)
        # ps and procfs (the debugger program) skip it, as sysctl_kern_proc did: its
        # U-area is filled in only at the end of fork1
        from smp.kernel.userland import libc
        pid = p.p_pid
        vs.check("fp_newborn_hidden_from_ps", pid not in [q[0] for q in libc.list_procs()]
                 and libc.peek_uarea(pid) == -ESRCH)
        vs.check("fp_newborn_kept", vs.swapout_procs_now(VM_SWAP_NORMAL) == 0)
        t.v_phase = 2
        vs.done()
    return _fork_on_held_proctree(False, driver, 1000, "prs_new")


def sx_waiter_swapped_out() -> list[Any]:
    """The same fork asleep on proctree_lock, with swap_idle_threshold1 = 0: the forker is
    a sleeping thread, safe to swap out, and swapout_procs swaps it out. proctree_lock is
    then granted to it while it is out: it must be woken as wakeup() wakes (setrunnable
    asks the swapper to bring it in), not run on a kernel stack that is not there."""
    def driver() -> None:
        t = vs.shared()
        helpers.wait_until(lambda: t.v_phase >= 1 and _newborn() is not None,
                           "the forker's child in creation")
        forker = vs.find_proc(t.v_pid)
        helpers.wait_until(lambda: vs.is_sleeping(forker), "the forker to wait for the lock")
        out = vs.swapout_procs_now(VM_SWAP_NORMAL)
        vs.check("sx_waiter_swapped_out", out >= 1 and not vs.sflag(forker) & PS.PS_INMEM,
                 f"{out} swapouts, forker p_sflag {vs.sflag(forker):#x}")
        t.v_phase = 2
        vs.done()
    return _fork_on_held_proctree(True, driver, 1500, "sx waiter")


@pytest.mark.timeout(60)
def test_an_sx_waiter_swapped_out_is_brought_in_when_granted(tmp_path: pathlib.Path) -> None:
    res = boot(tmp_path, quiet("machine.memory=8M", "vm.swap_idle_threshold1=0",
                               duration=40), sx_waiter_swapped_out())
    k = assert_checks(res, "sx_waiter_swapped_out", "fp_fork_done")
    assert res.report["invariants"] == [] and k["faultins_swapper"] >= 1, k


def copy_across_a_page_freed_meanwhile() -> list[Any]:
    """vm_object_copy_pages (fork of a COPY entry) waits for memory (VM_WAIT, Giant let
    go) after it found the source page; meanwhile the page goes to swap and is freed, and
    its frame gets another process's memory. The copy must come from swap, not from the
    frame it had found (it did: a sharer's child in a stress campaign read another
    process's page, 'user page 0x8048000 of pid 27 lost its contents')."""
    from smp.kernel.vm import vm_page as vp
    from smp.kernel.vm.swap_pager import swap_pager_haspage, vm_pager_get_pages, vm_pager_put_page
    from smp.kernel.vm.vm import OBJT_DEFAULT, VM_ALLOC_NORMAL, VM_PAGER_OK
    from smp.kernel.vm.vm_fault import vm_object_copy_pages
    from smp.kernel.vm.vm_object import vm_object_allocate

    mine, other = b"source page" * 8, b"other process" * 8

    def copier() -> None:
        t = vs.shared()
        mtx_lock(vs.giant())
        src = vm_object_allocate(OBJT_DEFAULT, 1)
        m = vp.vm_page_alloc(src, 0, VM_ALLOC_NORMAL)
        memory.phys_write(m.phys_addr * PAGE, mine)
        m.update(valid=VM_PAGE_BITS_ALL, dirty=VM_PAGE_BITS_ALL)
        vp.vm_page_wakeup(m)
        dst = vm_object_allocate(OBJT_DEFAULT, 1)
        taken = []                                  # memory short: the copy must wait
        while (p := vp.vm_page_alloc(None, 0, VM_ALLOC_NORMAL)) is not None:
            taken.append(p)
        t.v_pid, t.v_aux = src.handle, m.handle
        t.v_phase = 1
        vm_object_copy_pages(src, dst)
        nm = vp.vm_page_lookup(dst, 0)
        if nm is None and swap_pager_haspage(dst, 0):
            nm = vp.vm_page_alloc(dst, 0, VM_ALLOC_NORMAL)
            vs.check("copy_read_back", vm_pager_get_pages(dst, [nm], 1, 0) == VM_PAGER_OK)
        got = memory.phys_read(nm.phys_addr * PAGE, len(mine)) if nm is not None else b""
        vs.check("copy_is_the_source_page", got == mine, f"the copy holds {got[:26]!r}")
        vp.vm_page_lock_queues()
        for p in taken:
            vp.vm_page_free(p)
        vp.vm_page_unlock_queues()
        mtx_unlock(vs.giant())
        vs.done()

    def pageout() -> None:
        from smp.kernel.kern.kern_synch import wakeup
        from smp.kernel.vm.vm_object import struct_vm_object
        t = vs.shared()
        vs.nap_until(lambda: t.v_phase >= 1, "the copier to find its page")
        p = vs.find_proc(comm="vmt-copier")
        vs.nap_until(lambda: FIRST_THREAD_IN_PROC(p).td_wmesg == "vmwait",
                     "the copier to wait for memory")
        mtx_lock(vs.giant())
        src, m = struct_vm_object.at(t.v_pid), vp.struct_vm_page.at(t.v_aux)
        vp.vm_page_busy(m)                          # as the pageout daemon: to swap ...
        vs.check("paged_out", vm_pager_put_page(src, m) == VM_PAGER_OK)
        vp.vm_page_lock_queues()
        vp.vm_page_free(m)                          # ... freed ...
        vp.vm_page_unlock_queues()
        memory.phys_write(m.phys_addr * PAGE, other)  # ... and the frame reused
        wakeup(vp.cnt.addr("v_free_count"))
        mtx_unlock(vs.giant())
        vs.done()
    return [vs.boot_kthread("vmt-copier", copier, cpu=0),
            vs.boot_kthread("vmt-pageout", pageout, cpu=1),
            vs.boot_kthread("vmt-coord", vs.coordinator(2, 1500, "copy_pages"), cpu=0)]


def test_a_fork_copy_that_waited_for_memory_copies_the_page_it_had_not_lost(
        tmp_path: pathlib.Path) -> None:
    res = boot(tmp_path, quiet(duration=40), copy_across_a_page_freed_meanwhile())
    assert_checks(res, "paged_out", "copy_read_back", "copy_is_the_source_page")


def wait_meets_exit_between_its_last_locks() -> list[Any]:
    """A parent calls wait just as its child, in exit1, has let go of proctree_lock and
    Giant and holds its own and its parent's proc locks, not yet a zombie. (wait1 tested the child's
    state under sched_lock alone: it saw no zombie, blocked on its own proc lock, and the
    child's wakeup came before its sleep: it slept forever. A swap-heavy campaign's run:
    'lost wakeup: ... (forker) asleep on &proc ('wait') waits for a child to become a
    zombie, which it is'.) cpu 0's exit1 stops in that window (proctree_lock and Giant let
    go, the proc locks held) until the parent has asked, and gives it the CPU."""
    from smp.kernel.kern import kern_exit
    from smp.kernel.kern.kern_synch import maybe_yield
    from smp.kernel.kern.kern_thread import curlocal, curproc
    from smp.kernel.userland import libc

    def child() -> None:
        libc.exit(0)

    def parent() -> None:
        t = vs.shared()
        pid = libc.fork(child, "vmt-child")
        vs.nap_until(lambda: t.v_phase >= 1, "the child in exit1's window")
        t.v_phase = 2
        err, cpid, _ = libc.wait()
        vs.check("reaped_the_child", err == 0 and cpid == pid, f"wait: {err}, {cpid}")
        vs.done()

    def window(_: Any) -> None:
        if md.pcpu.cpuid != 0:
            return
        real_sx_xunlock, real_mtx_unlock = kern_exit.sx_xunlock, kern_exit.mtx_unlock
        left_proctree = [False]

        def sx_xunlock(lock: int) -> None:
            real_sx_xunlock(lock)
            if lock == kern_globals.G.proctree_lock and curproc().p_comm == "vmt-child":
                left_proctree[0] = True

        def mtx_unlock(lock: int) -> None:          # exit1's Giant, after proctree_lock
            real_mtx_unlock(lock)
            if not left_proctree[0] or curproc().p_comm != "vmt-child":
                return
            left_proctree[0] = False
            t = vs.shared()
            t.v_phase = 1
            helpers.wait_until(lambda: t.v_phase >= 2, "the parent to ask")
            for _ in range(5):                          # it gets as far as it can
                md.cpu_work(500)
                curlocal().need_resched = True
                maybe_yield()
        kern_exit.sx_xunlock, kern_exit.mtx_unlock = sx_xunlock, mtx_unlock
    return [helpers.sysinit("vmt-exit-window", window, percpu=True),
            vs.boot_fork("vmt-parent", parent, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(1, 500, "wait_exit"), cpu=1)]


def test_wait_meets_an_exit_between_its_last_locks_and_reaps_it(
        tmp_path: pathlib.Path) -> None:
    res = boot(tmp_path, quiet(duration=20), wait_meets_exit_between_its_last_locks())
    assert_checks(res, "reaped_the_child")


MAP_TRYLOCK_ROUNDS = 30


def fp_map_trylock() -> list[Any]:
    """A swappable sleeper whose map another thread holds and keeps changing (as another
    thread of the process would, mapping and unmapping: "Lock the map until swapout
    finishes, or a thread of this process may attempt to alter the map"). swapout_procs
    must leave it alone; without the map lock, swapout() walks the map's entries
    (vmspace_resident_count) while they are freed under it. The driver swaps the sleeper
    in again (PHOLD) after each round, so every round is a chance."""
    def holder() -> None:
        from smp.kernel.vm.vm import VM_PROT_ALL as ALL
        from smp.kernel.vm.vm_map import vm_map_delete, vm_map_insert, vm_map_lock, vm_map_unlock
        t = vs.shared()
        vs.nap_until(lambda: t.v_pid != 0, "the sleeper to start")
        p = vs.find_proc(t.v_pid)
        vs.nap_until(lambda: vs.slptime(p) >= 2, "the sleeper to be swappable")
        map_ = p.p_vmspace.vm_map
        vm_map_lock(map_)
        t.v_phase = 1
        va = 0x20000000
        n = 0
        while t.v_phase < 2:
            for i in range(4):
                vm_map_insert(map_, None, 0, va + i * PAGE, va + (i + 1) * PAGE, ALL, ALL)
            vm_map_delete(map_, va, va + 4 * PAGE)
            n += 1
            md.cpu_work(100)           # (without a pause the churn floods the server)
        vm_map_unlock(map_)
        vs.value("fp_map_churns", n)
        vs.done()

    def driver() -> None:
        from smp.kernel.kern.kern_proc import PHOLD, PRELE
        t = vs.shared()
        helpers.wait_until(lambda: t.v_phase >= 1, "the map to be locked")
        p = vs.find_proc(t.v_pid)
        out = 0
        for _ in range(MAP_TRYLOCK_ROUNDS):
            out += vs.swapout_procs_now(VM_SWAP_NORMAL)
            mtx_lock(kern_globals.G.Giant)
            PHOLD(p)
            PRELE(p)
            mtx_unlock(kern_globals.G.Giant)
        vs.check("fp_busy_map_skipped", out == 0, f"{out} swapouts of a busy map")
        t.v_phase = 2
        vs.done()
    return [vs.boot_fork("vmt-sleeper", sleeper(False), cpu=1),
            vs.boot_kthread("vmt-holder", holder, cpu=1),
            vs.boot_kthread("vmt-fp", driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(2, 1500, "map_trylock"), cpu=0)]


HOLD_LOCKS_ROUNDS = 20
HOLD_LOCKS_TICKS = 1500         # the rounds' budget: 15 sim s
HOLD_LOCKS_BACK_TICKS = 1100    # after the last: the swapper's timeout is 10 sim s (F3)


def fp_hold_locks() -> list[Any]:
    """A process that naps two ticks at a time on cpu1 (threshold1 = 0: always a
    candidate) while cpu0 calls swapout_procs again and again: the process wakes in any
    window between swapout_procs' checks and swapout().

    Each round starts once the swapper has brought the napper back in. That may take the
    swapper's own timeout (10 simulated s): a napper that wakes while it is being swapped
    out asks for a swap-in that the swapper, which skips a process being swapped out and
    goes back to sleep, does not see until then (finding F3, FINDINGS.md).

    Only the driver's end is awaited: this scenario also races swapout()'s unlocked
    TD_SET_SWAPPED against the napper's wakeups, which is finding F2 (FINDINGS.md): now
    and then the napper's wakeup is lost and it stays swapped out, asleep on no channel.
    That is the 2002 code's bug, not this guard's, so the napper is not waited for then."""
    def napper() -> None:
        from smp.kernel.userland import libc
        t = vs.shared()
        t.v_pid = libc.getpid()
        while t.v_phase == 0:
            libc.sleep_ticks(2)
        libc.exit(0)

    def driver() -> None:
        from smp.kernel.kern.kern_synch import tsleep
        from smp.kernel.sys.param import PWAIT
        t = vs.shared()
        helpers.wait_until(lambda: t.v_pid != 0, "the napper to start")
        p = vs.find_proc(t.v_pid)
        G = kern_globals.G
        td = FIRST_THREAD_IN_PROC(p)

        def lost() -> bool:
            """F2: asleep and swapped out, but on no sleep queue: its wakeup was lost."""
            mtx_lock_spin(G.sched_lock)
            inhib, wchan = td.load("td_inhibitors", "td_wchan")
            mtx_unlock_spin(G.sched_lock)
            return bool(inhib & TDI.TDI_SLEEPING and inhib & TDI.TDI_SWAPPED and not wchan)

        def back(until: int) -> bool:
            """Nap a tick at a time until the napper is in memory (True), F2 lost its
            wakeup or the tick ``until`` (False)."""
            while md.pcpu.ticks < until:
                if vs.sflag(p) & PS.PS_INMEM:
                    return True
                if lost():
                    return False
                tsleep(t.addr("v_aux"), PWAIT, "back", 1)
            return False

        n = 0
        end = md.pcpu.ticks + HOLD_LOCKS_TICKS
        for _ in range(HOLD_LOCKS_ROUNDS):
            if not back(end):
                break
            n += vs.swapout_procs_now(VM_SWAP_NORMAL)
            tsleep(t.addr("v_aux"), PWAIT, "pause", 1)      # let the swapper run
        vs.value("fp_hold_locks_swapouts", n)
        back(md.pcpu.ticks + HOLD_LOCKS_BACK_TICKS)
        vs.value("fp_hold_locks_f2_lost_wakeup", int(lost()))
        t.v_phase = 1
        vs.done()
    return [vs.boot_fork("vmt-napper", napper, cpu=1),
            vs.boot_kthread("vmt-fp", driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(1, 3500, "hold_locks"), cpu=0)]


def fp_swappingin() -> list[Any]:
    """A swapped-out sleeper whose U-area and kernel stack went to swap: PHOLD from cpu0
    swaps it in and sleeps on the (slow) swap device; cpu1 PHOLDs it meanwhile and must
    wait for that swap-in rather than start a second one. Then the process is swapped out
    again and the kernel's invariant check runs."""
    def phold_pair(first: bool) -> None:
        from smp.kernel.kern.kern_proc import PHOLD, PRELE
        from smp.kernel.kern.subr_invariants import check_machine
        G = kern_globals.G
        t = vs.shared()
        vs.nap_until(lambda: t.v_pid != 0, "the sleeper to start")
        p = vs.find_proc(t.v_pid)
        if first:
            helpers.wait_until(lambda: vs.slptime(p) >= 2, "the sleeper to sleep 2 s")
            vs.check("fp_swapped_out", vs.swapout_procs_now(VM_SWAP_NORMAL) == 1)
            vs.check("fp_paged_out", vs.pageout_proc_pages(p) > 0)
            t.v_phase = 1
        else:
            vs.nap_until(lambda: t.v_phase >= 1, "the swapout")
            helpers.spin_until(lambda: vs.sflag(p) & PS.PS_SWAPPINGIN, "the swap-in")
        mtx_lock(G.Giant)
        PHOLD(p)
        vs.check("fp_phold_inmem", vs.sflag(p) & PS.PS_INMEM)
        PRELE(p)
        mtx_unlock(G.Giant)
        if first:
            helpers.spin_until(lambda: t.v_done >= 1, "the other PHOLD")
            vs.check("fp_out_again", vs.swapout_procs_now(VM_SWAP_NORMAL) == 1)
            check_machine()
        vs.done()

    return [vs.boot_fork("vmt-sleeper", sleeper(False), cpu=1),
            vs.boot_kthread("vmt-phold0", lambda: phold_pair(True), cpu=0),
            vs.boot_kthread("vmt-phold1", lambda: phold_pair(False), cpu=1),
            vs.boot_kthread("vmt-coord", vs.coordinator(2, 1500, "swappingin"), cpu=0)]


def fp_scheduler_recheck() -> list[Any]:
    """The swapper's path: a woken swapped-out sleeper (the swap machine's story).

    Only the guard-in-force half: the re-check cannot be made to matter in this kernel.
    The swapper holds Giant from its scan of allproc to its PROC_LOCK/sched_lock of the
    chosen process (the sx and spin locks it takes in between do not drop Giant, and a
    thread blocked on the proc mutex keeps it), and every change of PS_INMEM,
    PS_SWAPPING and PS_SWAPPINGIN (swapout_procs/swapout, faultin) happens under Giant.
    So the flags the scan saw cannot change before the re-check, and with the fail point
    on the run is the same run (the guard is reached with the flags clear)."""
    return [vs.boot_fork("vmt-sleeper", sleeper(True), cpu=1),
            vs.boot_kthread("vmt-driver", swap_driver, cpu=0),
            vs.boot_kthread("vmt-coord", vs.coordinator(2, 1500, "the swap story"), cpu=0)]


# name -> (scenario, extra config, checks that pass with the guard in force, what the
# failure looks like with the fail point on: words of the panic message ("stack:X": X in
# the panicking stack), or "violation"; None: the fail point cannot be made to fire, see
# fp_scheduler_recheck)
FAIL_POINTS: dict[str, tuple[Any, list[str], list[str], Any]] = {
    "swapout_procs_p_system": (fp_p_system, [], ["fp_nothing_swapped"],
                               ["swapout_procs: a process has no address space"]),
    "swapout_procs_safetoswapout": (fp_safetoswapout, ["vm.swap_idle_threshold1=0"],
                                    ["fp_running_kept"],
                                    ["swapout: there is a thread not safe for swapout"]),
    "swapout_procs_prs_new": (fp_prs_new, [], ["fp_newborn_has_no_vmspace",
                                               "fp_newborn_hidden_from_ps",
                                               "fp_newborn_kept", "fp_fork_done"],
                              ["swapout_procs: a process has no address space"]),
    "swapout_procs_map_trylock": (fp_map_trylock, ["vm.swap_idle_threshold1=1",
                                                   "debug.chaos=high"],
                                  ["fp_busy_map_skipped"],
                                  ["fatal trap", "stack:in swapout",
                                   "stack:in vmspace_resident_count"]),
    "swapout_procs_hold_locks": (fp_hold_locks, ["vm.swap_idle_threshold1=0"], [],
                                 ["swapout:"]),
    "faultin_swappingin": (fp_swappingin, ["vm.swap_idle_threshold1=1",
                                           "machine.swap_latency_us=300000"],
                           ["fp_swapped_out", "fp_paged_out", "fp_out_again"], "violation"),
    "scheduler_recheck": (fp_scheduler_recheck, ["vm.swap_idle_threshold1=1"],
                          ["sleeper_back_in_memory", "swapout_one", "swapout_again"], None),
}


def test_fail_points_all_covered() -> None:
    from smp.kernel.conf import kern_fail
    assert sorted(FAIL_POINTS) == [f.name for f in kern_fail.fail_points()]


def _fp_run(tmp_path: pathlib.Path, name: str, on: bool, seed: int = 1) -> Any:
    scenario, extra, _checks, _fails = FAIL_POINTS[name]
    fp = [f'debug.fail_points=["{name}"]'] if on else []
    return boot(tmp_path, quiet("machine.memory=8M", f"run.seed={seed}", *extra, *fp,
                                duration=40), scenario())


# hold_locks runs 40 simulated s: 107 wall s beside two busy loops in one of two xdist
# workers (a bound is multiplied by the workers: conftest)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(FAIL_POINTS))
def test_fail_point_guard_in_force_run_is_clean(tmp_path: pathlib.Path, name: str) -> None:
    """The scenario with the guard in force: a clean run, the guard's case handled."""
    res = _fp_run(tmp_path, name, on=False)
    k = assert_checks(res, *FAIL_POINTS[name][2])
    assert res.report["invariants"] == [] and k["checksum_errors"] == 0
    # nothing in flight either (smp.machine.inflight)
    assert [f for f in res.report["findings"] if f["detector"] == "inflight"] == []
    if name == "swapout_procs_hold_locks":
        assert k["t_val_fp_hold_locks_swapouts"] >= 1, k
        # the swapper brought the napper back, unless finding F2 lost its wakeup at the
        # first swapout (then it stays out, asleep on no channel: see fp_hold_locks)
        assert k["faultins_swapper"] >= 1 or k["t_val_fp_hold_locks_f2_lost_wakeup"], k
    if name == "faultin_swappingin":
        assert k["swapin_waits"] >= 1, "the second PHOLD never met the swap-in in progress"
    if name == "scheduler_recheck":
        assert k["faultins_swapper"] >= 1
    if name == "swapout_procs_map_trylock":
        assert k["t_val_fp_map_churns"] > 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(n for n, v in FAIL_POINTS.items() if v[3] is not None))
def test_fail_point_switched_off_run_fails(tmp_path: pathlib.Path, name: str) -> None:
    """The same scenario with the guard switched off: the run fails. The failure is a
    race of real CPUs inside a quantum, so an attempt that came out clean is
    inconclusive, and is run again with another seed, at most three times: hold_locks,
    the napper never woke in the window (two rounds only, beside two busy loops: each
    waits out the swapper's 10 s timeout, F3), or finding F2 lost its wakeup before the
    guard's failure showed; map_trylock, every round swapped the busy map out but no
    swapout's walk of the entries met the holder's frees (seen once in a suite, in 30
    rounds)."""
    for seed in (1, 2, 3):
        res = _fp_run(tmp_path / f"s{seed}", name, on=True, seed=seed)
        if not res.report["ok"]:
            break
    fails = FAIL_POINTS[name][3]
    r = res.report
    assert res.exit_status == 1 and r["ok"] is False, describe(res)
    # the kernel counts each case the switched-off guard let by (kern_fail.guard)
    assert r["kernel"].get(f"failpoint_{name}", 0) >= 1, r["kernel"]
    if fails == "violation":
        # a second swap-in wires the pages twice: the next check sees the U-area wired
        # twice, or after the next swapout still wired (or, in another interleaving,
        # something panics)
        assert (any("PS_INMEM is False" in v or "wired 2 times" in v
                    for v in r["invariants"])
                or r["panic"] is not None), describe(res)
        # and at the moment it happens, by the in-flight check: the swap-out that
        # follows the double swap-in ends with the U-area still wired, naming the
        # store that ended it (swapout's PS_SWAPPING clear) and the last wiring
        inflight = [f for f in r["findings"] if f["detector"] == "inflight"]
        assert r["panic"] is not None or any(
            "PS_SWAPPING cleared with PS_INMEM clear and the U-area still wired"
            in f["summary"] and f["sites"][0].startswith("vm/vm_glue.py:")
            for f in inflight), inflight
    else:
        expect_panic(res, *(w for w in fails if not w.startswith("stack:")))
        stack = "\n".join(r["panic"]["stack"])
        for w in fails:
            if w.startswith("stack:"):
                assert w[6:] in stack, f"{w[6:]!r} not in the panic stack:\n{stack}"

