"""Physical memory: page frames as bytes, and the kernel's page table (the MMU).

The server process owns the one instance. Frames are numbered from 0; a physical address is
``frame * PAGE_SIZE + offset``. The memory is one anonymous mapping (``mmap``, zero-filled
by the host kernel on first touch; a ``bytearray`` would be zeroed, so resident, at once and
take seconds for 1 GiB), so an untouched frame costs the host nothing until it is written,
which keeps a 1 GiB machine cheap.

The MMU holds only the kernel's mappings (``pmap_kenter``/``pmap_qenter`` style: virtual page
-> frame). A kernel access through an unmapped virtual address raises :class:`Fault`, which
the server turns into a fatal trap of the CPU that made it, as real hardware would.
"""

from __future__ import annotations

import dataclasses
import mmap
import zlib

PAGE_SIZE = 4096
PAGE_SHIFT = 12


def _zeroed(nbytes: int) -> "mmap.mmap | bytearray":
    """``nbytes`` of zeroes that take host memory only where written."""
    return mmap.mmap(-1, nbytes) if nbytes > 0 else bytearray()


class Fault(Exception):
    """An access the hardware refuses (unmapped kernel address, out-of-range frame)."""


@dataclasses.dataclass(frozen=True)
class PhysMemStatistics:
    npages: int
    loads: int
    stores: int
    mapped_kva_pages: int
    faults: int


class PhysMem:
    """``npages`` page frames plus the kernel page table."""

    def __init__(self, nbytes: int) -> None:
        self.npages = nbytes // PAGE_SIZE
        self.mem = _zeroed(self.npages * PAGE_SIZE)
        self.kpt: dict[int, int] = {}          # kernel virtual page number -> frame
        self.loads = 0
        self.stores = 0
        self.faults = 0

    # -- physical access -------------------------------------------------------------
    def _check(self, paddr: int, length: int) -> None:
        if paddr < 0 or length < 0 or paddr + length > len(self.mem):
            self.faults += 1
            raise Fault(f"physical address {paddr:#x}+{length} outside memory "
                        f"(0..{len(self.mem):#x})")

    def fetch(self, paddr: int, length: int) -> bytes:
        self._check(paddr, length)
        self.loads += 1
        return bytes(self.mem[paddr:paddr + length])

    def store(self, paddr: int, data: bytes) -> None:
        self._check(paddr, len(data))
        self.stores += 1
        self.mem[paddr:paddr + len(data)] = data

    def frame_view(self, frame: int) -> memoryview:
        self._check(frame * PAGE_SIZE, PAGE_SIZE)
        return memoryview(self.mem)[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE]

    def checksum(self, frame: int) -> int:
        return zlib.crc32(self.frame_view(frame))

    def copy_frame(self, src: int, dst: int) -> None:
        self.frame_view(dst)[:] = self.frame_view(src)
        self.stores += 1

    def zero_frame(self, frame: int) -> None:
        self.frame_view(frame)[:] = bytes(PAGE_SIZE)
        self.stores += 1

    # -- the kernel MMU --------------------------------------------------------------
    def kenter(self, kva: int, frames: list[int]) -> None:
        """Map consecutive virtual pages from ``kva`` to ``frames`` (pmap_qenter)."""
        if kva % PAGE_SIZE:
            raise Fault(f"kenter: unaligned kva {kva:#x}")
        vpn = kva >> PAGE_SHIFT
        for i, frame in enumerate(frames):
            self._check(frame * PAGE_SIZE, PAGE_SIZE)
            self.kpt[vpn + i] = frame

    def kremove(self, kva: int, npages: int) -> None:
        """Remove ``npages`` mappings from ``kva`` (pmap_qremove); absent ones are fine."""
        vpn = kva >> PAGE_SHIFT
        for i in range(npages):
            self.kpt.pop(vpn + i, None)

    def translate(self, kva: int, length: int) -> int:
        """Physical address of ``kva``; the range must lie in one mapped page."""
        vpn, off = kva >> PAGE_SHIFT, kva & (PAGE_SIZE - 1)
        if off + length > PAGE_SIZE:
            self.faults += 1
            raise Fault(f"kernel access {kva:#x}+{length} crosses a page boundary")
        frame = self.kpt.get(vpn)
        if frame is None:
            self.faults += 1
            raise Fault(f"fatal trap 12: page fault while in kernel mode, "
                        f"fault virtual address = {kva:#x} (not mapped)")
        return frame * PAGE_SIZE + off

    def probe(self, kva: int) -> int:
        """The frame behind ``kva``, or -1: a translation that cannot trap (pmap_kextract)."""
        return self.kpt.get(kva >> PAGE_SHIFT, -1)

    def kfetch(self, kva: int, length: int) -> bytes:
        return self.fetch(self.translate(kva, length), length)

    def kstore(self, kva: int, data: bytes) -> None:
        self.store(self.translate(kva, len(data)), data)

    # -- the device protocol ---------------------------------------------------------
    def statistics(self) -> PhysMemStatistics:
        return PhysMemStatistics(self.npages, self.loads, self.stores, len(self.kpt),
                                 self.faults)

    def dumpstate(self) -> str:
        s = self.statistics()
        return (f"physmem: {s.npages} frames of {PAGE_SIZE} bytes, {s.mapped_kva_pages} "
                f"kernel pages mapped, {s.loads} loads, {s.stores} stores, {s.faults} faults")

    def cleanup(self) -> None:
        self.mem = bytearray()
        self.kpt.clear()


class SwapDevice:
    """The swap disk: ``nblocks`` page-sized blocks. Every transfer returns the CRC-32 of
    the page as it crossed, so the pager above can prove that what comes back is what went
    out."""

    def __init__(self, nbytes: int) -> None:
        self.nblocks = nbytes // PAGE_SIZE
        self.disk = _zeroed(self.nblocks * PAGE_SIZE)
        self.writes = 0
        self.reads = 0

    def _block(self, block: int) -> memoryview:
        if not 0 <= block < self.nblocks:
            raise Fault(f"swap block {block} outside the device (0..{self.nblocks - 1})")
        return memoryview(self.disk)[block * PAGE_SIZE:(block + 1) * PAGE_SIZE]

    def write(self, mem: PhysMem, frame: int, block: int) -> int:
        src = mem.frame_view(frame)
        self._block(block)[:] = src
        self.writes += 1
        return zlib.crc32(src)

    def read(self, mem: PhysMem, block: int, frame: int) -> int:
        src = self._block(block)
        mem.frame_view(frame)[:] = src
        self.reads += 1
        return zlib.crc32(src)

    def copy(self, src: int, dst: int) -> int:
        data = self._block(src)
        self._block(dst)[:] = data
        self.writes += 1
        return zlib.crc32(data)

    def statistics(self) -> dict[str, int]:
        return {"blocks": self.nblocks, "reads": self.reads, "writes": self.writes}

    def dumpstate(self) -> str:
        return f"swap: {self.nblocks} blocks, {self.writes} page writes, {self.reads} page reads"

    def cleanup(self) -> None:
        self.disk = bytearray()
