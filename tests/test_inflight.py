"""Invariants in flight on their own (smp.machine.inflight): each state that must never
coexist made to happen by a crafted sequence of stores and MMU changes, as the server
applies them, and reported with both sites; the same sequences in the right order are
silent. Pure logic, in process; test_configs_run.py shows it silent on the real kernel
and test_vm_glue.py makes it fire there through a fail point."""

from __future__ import annotations

from typing import Any

import pytest

from smp.hw.physmem import PAGE_SIZE, PhysMem
from smp.hw.protocol import field_addr
from smp.machine.inflight import Inflight
from smp.machine.objects import ObjectStore
from smp.machine.witness import Finding

pytestmark = pytest.mark.quick

INMEM, SWAPPINGIN, SWAPPING = 0x1, 0x2, 0x4
PQ_NONE, PQ_FREE, PQ_INACTIVE = 0, 1, 2
UVA = 0x100 * PAGE_SIZE          # the U-area's kernel virtual address


class Machine:
    """Kernel memory, the MMU and the checker, with the kernel's registration; ``store``
    and friends do what the server's operations do (store, then tell the checker)."""

    def __init__(self) -> None:
        self.kmem = ObjectStore()
        self.mem = PhysMem(16 * PAGE_SIZE)
        self.findings: list[Finding] = []
        self.kmem.deftype("globals", [["allproc", "list", "a", None],
                                      ["zombproc", "list", "a", None]])
        self.kmem.deftype("proc", [["p_pid", "int", "b", 0], ["p_sflag", "int", "j", 0],
                                   ["p_uarea", "int", "k", 0]])
        self.kmem.deftype("vm_page", [["phys_addr", "int", "", 0],
                                      ["queue", "int", "q", PQ_FREE],
                                      ["wire_count", "int", "q", 0]])
        g = self.kmem.new("globals", None)
        self.allproc, self.zombproc = field_addr(g, 0), field_addr(g, 1)
        self.pages = [self.kmem.new("vm_page", {"phys_addr": f}) for f in range(16)]
        self.op = 0                      # the machine's operations so far
        self.chk = Inflight(self.kmem, self.mem, self.findings.append, lambda: self.op)
        self.chk.policy({
            "live": [self.allproc, self.zombproc],
            "exclusive": [{"type": "proc", "field": "p_sflag",
                           "bits": {"PS_SWAPPING": SWAPPING, "PS_SWAPPINGIN": SWAPPINGIN}}],
            "resident": [{"type": "proc", "field": "p_sflag", "bit": INMEM,
                          "name": "PS_INMEM", "va": "p_uarea", "npages": 1,
                          "what": "U-area", "done": SWAPPING,
                          "done_name": "PS_SWAPPING"}],
            "pages": {"type": "vm_page", "frame": "phys_addr", "queue": "queue",
                      "free": PQ_FREE, "wire": "wire_count"}})

    def store(self, site: str, h: int, **values: Any) -> None:
        self.op += 1
        self.kmem.storen(h, values)
        self.chk.stored(1, site, h, list(values))

    def kenter(self, site: str, va: int, frames: list[int]) -> None:
        self.op += 1
        self.chk.kenter(1, site, va, frames)
        self.mem.kenter(va, frames)

    def kremove(self, site: str, va: int, n: int) -> None:
        self.op += 1
        self.chk.kremove(1, site, va, n)
        self.mem.kremove(va, n)

    def alloc(self, site: str, frame: int, wired: int = 1) -> None:
        self.store(site, self.pages[frame], queue=PQ_NONE, wire_count=wired)

    def free(self, site: str, frame: int) -> None:
        self.store(site, self.pages[frame], wire_count=0)
        self.store(site, self.pages[frame], queue=PQ_FREE)

    def proc(self, frame: int = 3) -> int:
        """A process in memory, as fork makes it: U-area page allocated wired and
        mapped (vm_proc_new), then PS_INMEM (fork1); on allproc."""
        p = self.kmem.new("proc", {"p_pid": 7})
        self.kmem.listhead(self.allproc).insert_tail(p)
        self.alloc("vm_glue.py:vm_proc_new", frame)
        self.store("vm_glue.py:vm_proc_new", p, p_uarea=UVA)
        self.kenter("pmap.py:pmap_qenter", UVA, [frame])
        self.store("kern_fork.py:fork1", p, p_sflag=INMEM)
        return p

    def swapout(self, p: int, frame: int = 3) -> None:
        """swapout() in the C's order: PS_INMEM off and PS_SWAPPING on, then the U-area
        unwired and unmapped, then PS_SWAPPING off."""
        self.store("vm_glue.py:swapout1", p, p_sflag=SWAPPING)
        w = self.kmem.load(self.pages[frame], "wire_count") - 1
        self.store("vm_page.py:unwire", self.pages[frame], wire_count=w,
                   queue=PQ_INACTIVE if w == 0 else PQ_NONE)
        self.kremove("pmap.py:pmap_qremove", UVA, 1)
        self.store("vm_glue.py:swapout2", p, p_sflag=0)

    def faultin(self, p: int, frame: int = 3) -> None:
        """faultin() in the C's order: PS_SWAPPINGIN, the U-area wired and mapped, then
        PS_INMEM on and PS_SWAPPINGIN off."""
        self.store("vm_glue.py:faultin1", p, p_sflag=SWAPPINGIN)
        self.store("vm_page.py:wire", self.pages[frame], wire_count=1, queue=PQ_NONE)
        self.kenter("pmap.py:pmap_qenter", UVA, [frame])
        self.store("vm_glue.py:faultin2", p, p_sflag=INMEM)

    def summaries(self) -> list[str]:
        return [f.summary for f in self.findings]


def test_correct_swapping_is_silent() -> None:
    m = Machine()
    p = m.proc()
    for _ in range(3):
        m.swapout(p)
        m.faultin(p)
    # a U-area disposed of after the reap (off every list): torn down, not checked
    m.kmem.listhead(m.allproc).remove(p)
    m.kremove("vm_glue.py:vm_proc_dispose", UVA, 1)
    assert m.findings == []
    assert m.chk.checks > 0


def test_swapping_with_swappingin() -> None:
    m = Machine()
    p = m.proc()
    m.store("vm_glue.py:swapout1", p, p_sflag=SWAPPING)
    m.store("vm_glue.py:faultin1", p, p_sflag=SWAPPING | SWAPPINGIN)
    [f] = m.findings
    assert f.detector == "inflight"
    assert "PS_SWAPPING|PS_SWAPPINGIN" in f.summary
    assert f.sites == ["vm_glue.py:faultin1", "vm_glue.py:swapout1"]   # this store, the other
    # once: the same pair of sites again is not a second finding
    m.store("vm_glue.py:x", p, p_sflag=INMEM)
    m.store("vm_glue.py:swapout1", p, p_sflag=SWAPPING)
    m.store("vm_glue.py:faultin1", p, p_sflag=SWAPPING | SWAPPINGIN)
    assert len(m.findings) == 1


def test_inmem_set_before_the_uarea_is_back() -> None:
    """faultin with PS_INMEM set before vm_proc_swapin: the U-area is not mapped."""
    m = Machine()
    p = m.proc()
    m.swapout(p)
    m.store("vm_glue.py:faultin_early", p, p_sflag=INMEM)
    [f] = m.findings
    assert "PS_INMEM set with the U-area not mapped" in f.summary
    assert f.sites == ["vm_glue.py:faultin_early", "pmap.py:pmap_qremove"]


def test_inmem_set_with_the_uarea_unwired() -> None:
    m = Machine()
    p = m.proc()
    m.store("vm_glue.py:swapout1", p, p_sflag=SWAPPING)
    m.store("vm_page.py:unwire", m.pages[3], wire_count=0, queue=PQ_INACTIVE)
    m.store("vm_glue.py:faultin_early", p, p_sflag=INMEM)
    [f] = m.findings
    assert "not wired" in f.summary
    assert f.sites == ["vm_glue.py:faultin_early", "vm_page.py:unwire"]


def test_uarea_unmapped_or_unwired_while_inmem() -> None:
    """swapout with the U-area taken away before PS_INMEM is cleared: both the unwiring
    and the unmapping are findings, each naming the store that set PS_INMEM."""
    m = Machine()
    m.proc()
    m.store("vm_page.py:unwire", m.pages[3], wire_count=0, queue=PQ_INACTIVE)
    m.kremove("pmap.py:pmap_qremove", UVA, 1)
    assert len(m.findings) == 2
    assert "U-area page unwired while PS_INMEM is set" in m.findings[0].summary
    assert m.findings[0].sites == ["vm_page.py:unwire", "kern_fork.py:fork1"]
    assert "U-area page unmapped while PS_INMEM is set" in m.findings[1].summary
    assert m.findings[1].sites == ["pmap.py:pmap_qremove", "kern_fork.py:fork1"]


def test_swapout_ends_with_the_uarea_still_wired() -> None:
    """A second swap-in (faultin without its PS_SWAPPINGIN wait) wires the U-area twice;
    the next swap-out unwires it once: it ends with the page still wired."""
    m = Machine()
    p = m.proc()
    m.swapout(p)
    m.faultin(p)
    m.store("vm_page.py:wire", m.pages[3], wire_count=2)          # the second swap-in
    m.swapout(p)
    [f] = m.findings
    assert "PS_SWAPPING cleared with PS_INMEM clear and the U-area still wired" in f.summary
    assert f.sites == ["vm_glue.py:swapout2", "vm_page.py:wire"]


def test_a_zombie_counts_a_reaped_process_does_not() -> None:
    m = Machine()
    p = m.proc()
    m.kmem.listhead(m.allproc).remove(p)
    m.kmem.listhead(m.zombproc).insert_tail(p)
    m.kremove("pmap.py:pmap_qremove", UVA, 1)
    assert len(m.findings) == 1


def test_free_before_unmap_is_a_window_reuse_is_a_finding() -> None:
    """The 2002 order (free the page, then unmap it) is a window, counted; the page
    taken again while the old mapping stays is a finding naming the allocation and the
    stale mapping's entry."""
    m = Machine()
    m.alloc("pmap.py:new_thread", 5)
    m.kenter("pmap.py:kstack_map", 0x200 * PAGE_SIZE, [5])
    m.free("vm_page.py:vm_page_free", 5)
    assert m.findings == [] and m.chk.windows == 1
    m.alloc("vm_page.py:vm_page_alloc", 5)
    [f] = m.findings
    assert "reused while the kernel still maps it" in f.summary
    assert f.sites == ["vm_page.py:vm_page_alloc", "pmap.py:kstack_map"]
    # unmapped first (the later FreeBSD order): nothing
    m2 = Machine()
    m2.alloc("a", 5)
    m2.kenter("pmap.py:kstack_map", 0x200 * PAGE_SIZE, [5])
    m2.kremove("pmap.py:kstack_unmap", 0x200 * PAGE_SIZE, 1)
    m2.free("vm_page.py:vm_page_free", 5)
    m2.alloc("vm_page.py:vm_page_alloc", 5)
    assert m2.findings == [] and m2.chk.windows == 0


def test_use_after_free_through_a_stale_mapping() -> None:
    m = Machine()
    va = 0x200 * PAGE_SIZE
    m.alloc("a", 5)
    m.kenter("pmap.py:kstack_map", va, [5])
    m.chk.kaccess(1, "swtch.py:pcb", va + 8, "load")          # fine: mapped, in use
    m.free("vm_page.py:vm_page_free", 5)
    freed_at = m.op                                           # the store that freed it
    m.store("elsewhere", m.pages[7], wire_count=1)
    m.chk.kaccess(1, "swtch.py:pcb", va + 8, "load")
    [f] = m.findings
    assert f.summary.startswith("load through a stale kernel mapping")
    assert f.sites == ["swtch.py:pcb", "vm_page.py:vm_page_free"]
    # when the free happened, for `smp replay --until`, and by whom; when it was mapped
    assert f"freed @ vm_page.py:vm_page_free (operation {freed_at}, thread 1)" in f.summary
    assert "entered @ pmap.py:kstack_map (operation 2, thread 1)" in f.detail, f.detail
    # a fresh mapping of the reallocated page is not stale
    m.kremove("u", va, 1)
    m.alloc("b", 5)
    m.kenter("pmap.py:again", va, [5])
    m.chk.kaccess(1, "swtch.py:pcb2", va, "store")
    assert len(m.findings) == 1


def test_a_free_page_entered_in_the_mmu() -> None:
    m = Machine()
    m.alloc("a", 6)
    m.free("vm_page.py:vm_page_free", 6)
    m.kenter("pmap.py:pmap_qenter", 0x300 * PAGE_SIZE, [6])
    [f] = m.findings
    assert "free page (frame 0x6) entered in the kernel MMU" in f.summary
    assert f.sites == ["pmap.py:pmap_qenter", "vm_page.py:vm_page_free"]


def test_off_by_policy_and_bad_policies() -> None:
    m = Machine()
    m.chk.policy({})                              # nothing registered: nothing watched
    p = m.kmem.new("proc", {"p_pid": 1})
    m.store("x", p, p_sflag=SWAPPING | SWAPPINGIN)
    assert m.findings == []
    with pytest.raises(TypeError):
        m.chk.policy([1, 2])
    with pytest.raises(KeyError):
        m.chk.policy({"exclusive": [{"type": "proc"}]})
