"""Shared memory, as the kernel reaches it: one machine request per access.

The kernel's shared objects (``struct proc``, ``vm_page``, ...) are typed records in the
server's memory (DESIGN.md decision 2); their fields are loaded and stored here, one
request each, as a CPU loads and stores words. Requests that return a value wait for it;
stores, atomics whose result nobody wants, list and hash-table updates are posted and
travel in program order (decision 10). Also here: allocation and lookup of objects by
name, the kernel's lists and hash tables (kept where the objects are), physical pages, the
kernel MMU (``pmap_qenter``'s mappings) and the swap device.

Each function counts one memory request on this CPU and carries the caller's site.
"""

from __future__ import annotations

from typing import Any

# the address layout of kernel memory (hw.protocol), for the kernel's structures
from smp.hw.protocol import F_LIST, F_LOCK, F_MAP, FIELD_BITS  # noqa: F401
from smp.hw.protocol import Op
from smp.kernel.machine.cpu import pcpu_hw, site

__site_transparent__ = True    # the door: its requests are their caller's
__tracebackhide__ = True       # each function here is one access, not a frame of a trace


def _call(op: int, *args: Any) -> Any:
    hw = pcpu_hw()
    hw.counters.mem_ops += 1
    return hw.call(op, site(), *args)


def _post(op: int, *args: Any) -> None:
    hw = pcpu_hw()
    hw.counters.mem_ops += 1
    hw.post(op, site(), *args)


# -- fields of kernel objects --------------------------------------------------------------
def load(h: int, field: str) -> Any:
    return _call(Op.LOAD, h, field)


def loadn(h: int, fields: list[str]) -> list[Any]:
    return _call(Op.LOADN, h, fields)  # type: ignore[no-any-return]


def store(h: int, field: str, value: Any) -> None:
    _post(Op.STORE, h, field, value)


def storen(h: int, values: dict[str, Any]) -> None:
    _post(Op.STOREN, h, values)


def load_racy(h: int, fields: list[str]) -> list[Any]:
    """Loads made without the fields' lock on purpose: exempt from the lock-key check."""
    return _call(Op.LOADR, h, fields)  # type: ignore[no-any-return]


def store_racy(h: int, values: dict[str, Any]) -> None:
    _post(Op.STORER, h, values)


def atomic_add(h: int, field: str, delta: int) -> int:
    return _call(Op.ADD, h, field, delta)  # type: ignore[no-any-return]


def add_posted(h: int, field: str, delta: int) -> None:
    """``x += delta`` where nobody waits for the result: one posted request. Used where
    the C increments a field under its lock; the lock still orders the accesses."""
    _post(Op.ADDP, h, field, delta)


def atomic_set(h: int, field: str, bits: int) -> None:
    _post(Op.SETBITS, h, field, bits)


def atomic_clear(h: int, field: str, bits: int) -> None:
    _post(Op.CLRBITS, h, field, bits)


# -- objects: types, allocation, names -----------------------------------------------------
def deftype(name: str, decl: list[list[Any]]) -> None:
    """Declare a structure (its fields, kinds, lock keys and defaults) to the machine."""
    _post(Op.DEFTYPE, name, decl)


def obj_new(tname: str, init: dict[str, Any]) -> int:
    return _call(Op.NEW, tname, init)  # type: ignore[no-any-return]


def obj_newn(tname: str, count: int, init: dict[str, Any], index_field: str = "",
             list_head: int = 0) -> list[int]:
    """``count`` objects in one request, each with ``index_field`` set to its index and
    appended to the list at ``list_head`` (vm_page_startup's array of pages)."""
    return _call(Op.NEWN, tname, count, init, index_field, list_head)  # type: ignore[no-any-return]


def obj_free(h: int) -> None:
    _post(Op.FREE, h)


def obj_count(tname: str, conds: list[list[Any]]) -> int:
    """How many live objects of ``tname`` match every ``[field, "eq"|"clear", value]``."""
    return _call(Op.COUNT, tname, conds)  # type: ignore[no-any-return]


def symbol(name: str, h: int) -> None:
    """Publish a kernel global by name (the other CPUs find it with :func:`lookup`)."""
    _post(Op.SYMBOL, name, h)


def lookup(name: str) -> int:
    return _call(Op.LOOKUP, name)  # type: ignore[no-any-return]


# -- lists (TAILQ heads) and hash tables, kept beside the objects ---------------------------
def list_insert_head(head: int, h: int) -> None:
    _post(Op.LIST_INSERT_HEAD, head, h)


def list_insert_tail(head: int, h: int) -> None:
    _post(Op.LIST_INSERT_TAIL, head, h)


def list_remove(head: int, h: int) -> None:
    _post(Op.LIST_REMOVE, head, h)


def list_first(head: int) -> int:
    return _call(Op.LIST_FIRST, head)  # type: ignore[no-any-return]


def list_next(head: int, h: int) -> int:
    return _call(Op.LIST_NEXT, head, h)  # type: ignore[no-any-return]


def list_items(head: int) -> list[int]:
    return _call(Op.LIST_ITEMS, head)  # type: ignore[no-any-return]


def list_len(head: int) -> int:
    return _call(Op.LIST_LEN, head)  # type: ignore[no-any-return]


def list_search(head: int, lo: str, hi: str, value: Any) -> int:
    """The first element whose ``lo`` field <= ``value`` < its ``hi`` field (a walk of a
    sorted list, done where the list is)."""
    return _call(Op.LIST_SEARCH, head, lo, hi, value)  # type: ignore[no-any-return]


def map_get(table: int, key: Any) -> int:
    return _call(Op.MAP_GET, table, key)  # type: ignore[no-any-return]


def map_set(table: int, key: Any, h: int) -> None:
    _post(Op.MAP_SET, table, key, h)


def map_del(table: int, key: Any) -> None:
    _post(Op.MAP_DEL, table, key)


# -- physical pages and the swap device ----------------------------------------------------
def phys_read(paddr: int, length: int) -> bytes:
    return _call(Op.PLOAD, paddr, length)  # type: ignore[no-any-return]


def phys_write(paddr: int, data: bytes) -> None:
    _post(Op.PSTORE, paddr, data)


def page_zero(frame: int) -> None:
    _post(Op.PZERO, frame)


def page_copy(src: int, dst: int) -> None:
    _post(Op.PCOPY, src, dst)


def page_sum(frame: int) -> int:
    """The crc32 of a page frame's contents."""
    return _call(Op.PSUM, frame)  # type: ignore[no-any-return]


def swap_write(frame: int, block: int) -> int:
    """Write a page to a swap block; returns the crc32 of what was written."""
    return _call(Op.SWAPOUT, frame, block)  # type: ignore[no-any-return]


def swap_read(block: int, frame: int) -> int:
    """Read a swap block into a page; returns the crc32 of what was read."""
    return _call(Op.SWAPIN, block, frame)  # type: ignore[no-any-return]


def swap_copy(src: int, dst: int) -> int:
    return _call(Op.SWAPCOPY, src, dst)  # type: ignore[no-any-return]


# -- kernel virtual memory: loads and stores through the MMU (a fatal trap if unmapped) ----
def mmu_enter(va: int, frames: list[int]) -> None:
    """Map ``frames`` at consecutive pages from ``va`` (pmap_qenter)."""
    _post(Op.KENTER, va, frames)


def mmu_remove(va: int, npages: int) -> None:
    _post(Op.KREMOVE, va, npages)


def kread(kva: int, length: int) -> bytes:
    return _call(Op.KLOAD, kva, length)  # type: ignore[no-any-return]


def kread_probe(kva: int, length: int) -> bytes | None:
    """``kread``, or None where ``kva`` is not mapped (instead of a fatal trap)."""
    hw = pcpu_hw()
    hw.counters.mem_ops += 1
    ok, value = hw.probe(Op.KLOAD, site(), kva, length)
    return value if ok else None  # type: ignore[no-any-return]


def kwrite(kva: int, data: bytes) -> None:
    _post(Op.KSTORE, kva, data)


def kread_u64(kva: int) -> int:
    return int.from_bytes(kread(kva, 8), "little")


def kwrite_u64(kva: int, value: int) -> None:
    kwrite(kva, (value & (2**64 - 1)).to_bytes(8, "little"))


def kbzero(kva: int, length: int) -> None:
    kwrite(kva, bytes(length))


def kbcopy(src: int, dst: int, length: int) -> None:
    kwrite(dst, kread(src, length))


def kextract(kva: int) -> int:
    """The frame mapped at ``kva``, or -1 (pmap_kextract, which cannot trap)."""
    return _call(Op.KPROBE, kva)  # type: ignore[no-any-return]
