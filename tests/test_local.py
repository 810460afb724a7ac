"""Kernel logic on a machine in one process (``smp.run.local``): the page queues, vm_map,
the proc zone and the config's way into the kernel, each checked by a kernel thread that
hands its findings back as kernel counters (``helpers.result``) and ends the run.

None of this is about races, so none of it needs the real processes: each machine is one
CPU, the server and the launcher's part in one (forked) process, and boots in a fraction of
a second. The concurrency tests (test_machine, test_locks, test_vm_glue's race guards,
...) keep the real server and CPU processes.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import psutil
import pytest

import helpers
from helpers import describe, expect_shutdown, result
from smp.kernel.sys.kstruct import F, KStruct

QUIET = ["workload.kthreads=0", "user.procs_per_cpu=0", "run.duration=30"]


def scenario(name: str, body: Callable[[], None]) -> Any:
    """A SYSINIT that starts ``body`` as a kernel thread at boot; the run ends when it
    returns (a body that raises panics the machine, and the test says why)."""
    def start(_: Any) -> None:
        def run() -> None:
            body()
            helpers.finish(f"{name} done")
        helpers.kthread(run, name)
    return helpers.sysinit(f"test-local-{name}", start, percpu=True)


def check(name: str, ok: Any) -> None:
    result(f"t_{'ok' if ok else 'bad'}_{name}")


def checks(res: Any, *names: str) -> dict[str, int]:
    k = expect_shutdown(res)
    bad = sorted(n for n in k if n.startswith("t_bad_"))
    assert not bad, f"failed: {bad}; {describe(res)}"
    missing = [n for n in names if k.get(f"t_ok_{n}") != 1]
    assert not missing, f"not passed: {missing}; {describe(res)}"
    return k


@pytest.mark.timeout(60)
def test_the_default_kernel_runs_in_one_process_the_same_every_time(
        tmp_path: pathlib.Path) -> None:
    """The whole default kernel with its user land, 1.5 simulated seconds on one CPU: a
    clean run that did real work, twice with the same counters (one CPU, one order: a
    local machine is deterministic), and no process left behind."""
    runs = [helpers.run_local(["run.duration=1.5"], tmp_path=tmp_path / str(i))
            for i in range(2)]
    for res in runs:
        assert res.exit_status == 0 and res.report["ok"], describe(res)
        assert res.report["reason"] == "end of run", describe(res)
        assert res.report["kernel"]["forks"] > 0 and res.report["invariants"] == []
    assert runs[0].report["kernel"] == runs[1].report["kernel"]
    assert (tmp_path / "0" / "run" / "report.json").is_file()
    assert psutil.Process().children() == []


def page_queues() -> None:
    from smp.kernel.vm import vm_page as vp
    from smp.kernel.vm.vm import PG_BUSY, PQ_FREE, PQ_NONE, VM_ALLOC_NORMAL
    cnt = vp.cnt
    free0 = cnt.v_free_count
    pages = [vp.vm_page_alloc(None, i, VM_ALLOC_NORMAL) for i in range(8)]
    check("alloc", all(m is not None for m in pages))
    check("free_count_down", cnt.v_free_count == free0 - 8)
    check("off_the_queues_busy", all(m.queue == PQ_NONE and m.flags & PG_BUSY for m in pages))
    check("distinct_frames", len({m.phys_addr for m in pages}) == 8)
    vp.vm_page_lock_queues()
    for m in pages:
        vp.vm_page_free(m)
    vp.vm_page_unlock_queues()
    check("free_count_back", cnt.v_free_count == free0)
    check("on_the_free_queue", all(m.queue == PQ_FREE and not m.flags & PG_BUSY
                                   for m in pages))


@pytest.mark.timeout(60)
def test_page_queues_account_for_every_page(tmp_path: pathlib.Path) -> None:
    res = helpers.run_local(QUIET, [scenario("pages", page_queues)], tmp_path)
    checks(res, "alloc", "free_count_down", "off_the_queues_busy", "distinct_frames",
           "free_count_back", "on_the_free_queue")


def map_entries() -> None:
    from smp.kernel.vm.vm import KERN_SUCCESS, VM_PROT_READ, VM_PROT_WRITE
    from smp.kernel.vm.vm_map import (vm_map_check_protection, vm_map_create, vm_map_find,
                                      vm_map_lookup_entry, vm_map_remove)
    page = 4096
    m = vm_map_create(0x10000, 0x10000 + 64 * page)
    rv1, a = vm_map_find(m, None, 0, 0, 4 * page)
    rv2, b = vm_map_find(m, None, 0, 0, 2 * page, VM_PROT_READ, VM_PROT_READ)
    check("found", rv1 == rv2 == KERN_SUCCESS)
    check("apart", a == 0x10000 and b == a + 4 * page)
    check("counted", m.nentries == 2 and m.size == 6 * page)
    check("lookup", vm_map_lookup_entry(m, a + page).start == a)
    check("rw_where_rw", vm_map_check_protection(m, a, a + 4 * page,
                                                 VM_PROT_READ | VM_PROT_WRITE))
    check("not_rw_where_ro", not vm_map_check_protection(m, b, b + 2 * page,
                                                         VM_PROT_READ | VM_PROT_WRITE))
    check("not_across_a_hole", not vm_map_check_protection(m, a, b + 3 * page,
                                                           VM_PROT_READ))
    rv3, _ = vm_map_find(m, None, 0, 0, 64 * page)
    check("no_space", rv3 != KERN_SUCCESS)
    vm_map_remove(m, a, a + 4 * page)
    check("removed", m.nentries == 1 and m.size == 2 * page
          and vm_map_lookup_entry(m, a) is None)


@pytest.mark.timeout(60)
def test_vm_map_finds_checks_and_removes_entries(tmp_path: pathlib.Path) -> None:
    res = helpers.run_local(QUIET, [scenario("map", map_entries)], tmp_path)
    checks(res, "found", "apart", "counted", "lookup", "rw_where_rw", "not_rw_where_ro",
           "not_across_a_hole", "no_space", "removed")


def proc_zone() -> None:
    from smp.kernel.kern import kern_globals
    from smp.kernel.kern.kern_mutex import mtx_lock, mtx_unlock
    from smp.kernel.kern.kern_proc import PROC_ZONE_CACHE, proc_zalloc, proc_zfree
    from smp.kernel.kern.kern_proc import proc_zone as zone
    from smp.kernel.machine import memory
    G = kern_globals.G
    z = zone()
    mtx_lock(G.Giant)
    created0, nfree0 = z.pz_created, z.pz_nfree
    p = proc_zalloc()                     # a new one, or the first of the cache
    check("has_a_uarea", memory.kextract(p.p_uarea) != -1
          and (z.pz_created == created0 + 1 if nfree0 == 0 else z.pz_nfree == nfree0 - 1))
    nfree1 = z.pz_nfree
    proc_zfree(p)
    check("cached", z.pz_nfree == nfree1 + 1)
    again = proc_zalloc()
    check("recycled_as_it_was", again.handle == p.handle and memory.kextract(p.p_uarea) != -1)
    procs = [again] + [proc_zalloc() for _ in range(PROC_ZONE_CACHE + 3)]
    uareas = [q.p_uarea for q in procs]
    for q in procs:
        proc_zfree(q)
    mtx_unlock(G.Giant)
    check("cache_bounded", z.pz_nfree == PROC_ZONE_CACHE)
    gone = sum(1 for up in uareas if memory.kextract(up) == -1)
    check("the_rest_disposed", gone == len(procs) + nfree1 - PROC_ZONE_CACHE)
    result("t_val_disposed", gone)


@pytest.mark.timeout(60)
def test_the_proc_zone_caches_then_disposes(tmp_path: pathlib.Path) -> None:
    res = helpers.run_local(QUIET, [scenario("zone", proc_zone)], tmp_path)
    k = checks(res, "has_a_uarea", "cached", "recycled_as_it_was", "cache_bounded",
               "the_rest_disposed")
    assert k["procs_disposed"] == k["t_val_disposed"] > 0


def config_in_kernel() -> None:
    from smp.kernel import param
    from smp.kernel.machine import cpu as md
    from smp.kernel.vm import vm_glue
    from smp.kernel.vm import vm_page as vp
    check("hz", param.hz == 250)
    check("memory", param.physmem_pages == 1024)
    check("swap", param.swap_pages == 2048)
    check("thresholds", (vm_glue.swap_idle_threshold1, vm_glue.swap_idle_threshold2)
          == (7, 13))
    check("phold", md.pcpu.config["kern.phold"] == "first_hold")
    check("pages_counted", vp.cnt.v_page_count == 1024)
    check("one_cpu", param.ncpus == 1)


@pytest.mark.timeout(60)
def test_the_config_reaches_the_kernel(tmp_path: pathlib.Path) -> None:
    res = helpers.run_local([*QUIET, "machine.hz=250", "machine.memory=4M", "machine.swap=8M",
                             "vm.swap_idle_threshold1=7", "vm.swap_idle_threshold2=13",
                             "kern.phold=first_hold", "machine.cpus=4"],
                            [scenario("config", config_in_kernel)], tmp_path)
    checks(res, "hz", "memory", "swap", "thresholds", "phold", "pages_counted", "one_cpu")


struct_lor = KStruct("lortest", [F("l_a", "mtx"), F("l_b", "mtx"), F("l_c", "mtx"),
                                 F("l_done", "int")], doc="three locks taken in a cycle")


def three_lock_cycle() -> None:
    """Three kernel threads, each taking two of three mutexes: A then B, B then C, C then
    A. No two take the same two locks, one after the other: nothing waits, nothing
    deadlocks; the third closes a cycle of the order the first two established."""
    from smp.kernel.kern.kern_mutex import MTX_DEF, mtx_init, mtx_lock, mtx_unlock
    t = struct_lor.new()
    for f, name in (("l_a", "lor A"), ("l_b", "lor B"), ("l_c", "lor C")):
        mtx_init(t.addr(f), name, None, MTX_DEF)

    def pair(first: str, second: str) -> Callable[[], None]:
        def run() -> None:
            mtx_lock(t.addr(first))
            mtx_lock(t.addr(second))
            mtx_unlock(t.addr(second))
            mtx_unlock(t.addr(first))
            t.l_done = t.l_done + 1
        return run
    for n, (first, second) in enumerate((("l_a", "l_b"), ("l_b", "l_c"), ("l_c", "l_a"))):
        helpers.kthread(pair(first, second), f"lor{n}")
        helpers.wait_until(lambda: t.l_done > n, f"lor{n} to take its two locks")
    check("all_three", t.l_done == 3)


@pytest.mark.timeout(60)
def test_witness_finds_a_three_lock_cycle_taken_by_three_threads(
        tmp_path: pathlib.Path) -> None:
    res = helpers.run_local(QUIET, [scenario("lor", three_lock_cycle)], tmp_path)
    lors = [f for f in res.report["findings"] if f["detector"] == "witness"]
    assert [f["summary"].split(": 1st @")[0] for f in lors] == [
        "lock order reversal: lor C -> lor A (established: lor A -> lor B -> lor C)"], lors
    detail = lors[0]["detail"].splitlines()
    assert detail[3] == "established order: lor A -> lor B -> lor C, each step first seen"
    assert detail[4].startswith(" lor A -> lor B: 1st lor A @ test_local.py:"), detail
    assert detail[5].startswith(" lor B -> lor C: 1st lor B @ test_local.py:"), detail
    # the sites: the reversal's two, then the two of each step
    assert len(lors[0]["sites"]) == 6 and all(
        s.startswith("test_local.py:") for s in lors[0]["sites"]), lors[0]
    assert res.report["kernel"].get("t_ok_all_three") == 1, describe(res)


def sx_shared_twice() -> None:
    """The kernel's own sx (allproc) taken shared twice by one thread, as 5.0 allowed: its
    sx_init made every sx LO_RECURSABLE, so WITNESS counted the recursion and said
    nothing (kern_sx.py)."""
    from smp.kernel.kern import kern_globals
    from smp.kernel.kern.kern_sx import SX_SLOCKED, sx_assert, sx_slock, sx_sunlock
    G = kern_globals.G
    sx_slock(G.allproc_lock)
    sx_slock(G.allproc_lock)
    sx_sunlock(G.allproc_lock)
    sx_assert(G.allproc_lock, SX_SLOCKED)           # still held, once
    sx_sunlock(G.allproc_lock)
    check("sx_shared_twice", True)


@pytest.mark.timeout(60)
def test_the_kernel_s_sx_may_be_taken_shared_twice_silently(tmp_path: pathlib.Path) -> None:
    res = helpers.run_local(QUIET, [scenario("sxrec", sx_shared_twice)], tmp_path)
    checks(res, "sx_shared_twice")
    assert [f for f in res.report["findings"] if f["detector"] == "witness"] == []


def test_a_local_machine_waiting_for_nothing_is_stuck_not_hung() -> None:
    """A CPU that would wait for a message nothing in the machine can send any more: the
    channel says so at once (in a one-CPU machine that is a lost wakeup or a deadlock)."""
    from smp.run.local import CPU, LocalChannel, LocalMachine, LocalStuck
    machine = LocalMachine(helpers.config(["machine.memory=1M"]))
    channel = LocalChannel(machine, CPU)
    assert channel.poll(0) is False
    with pytest.raises(LocalStuck, match="nothing in this one-CPU machine"):
        channel.poll(100)


def test_a_local_machine_runs_in_virtual_time_only() -> None:
    from smp.run.local import LocalMachine
    with pytest.raises(ValueError, match="virtual time"):
        LocalMachine(helpers.config(["machine.time=wall"]))
