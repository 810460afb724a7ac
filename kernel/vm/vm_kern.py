"""Kernel virtual memory allocation, after FreeBSD ``vm/vm_kern.c`` (the part the port uses).

``kernel_map`` covers the kernel's virtual addresses; ``kmem_alloc_nofault`` reserves a range
of it with nothing behind it (the caller enters pages with ``pmap_qenter``), as vm_glue
does for each U-area and pmap does for each kernel stack.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import KObj
from smp.kernel.vm.vm import KERN_SUCCESS, round_page
from smp.kernel.vm.vm_map import (VM_MAX_KERNEL_ADDRESS, VM_MIN_KERNEL_ADDRESS, struct_vm_map,
                                  vm_map_create, vm_map_find, vm_map_remove)

kernel_map: KObj = None  # type: ignore[assignment]


def kmem_init(_: Any) -> None:
    global kernel_map
    kernel_map = vm_map_create(VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS, system=True)
    memory.symbol("kernel_map", kernel_map.handle)


SYSINIT("kmem", SI_SUB.SI_SUB_KMEM, SI_ORDER.SI_ORDER_FIRST, kmem_init)


def kmem_attach() -> None:
    global kernel_map
    if kernel_map is None:
        kernel_map = struct_vm_map.at(memory.lookup("kernel_map"))


def kmem_alloc_nofault(map_: KObj, size: int) -> int:
    """Reserve ``size`` bytes of kernel virtual space; 0 when there is none."""
    size = round_page(size)
    rv, addr = vm_map_find(map_, None, 0, VM_MIN_KERNEL_ADDRESS, size)
    return addr if rv == KERN_SUCCESS else 0


def kmem_free(map_: KObj, addr: int, size: int) -> None:
    vm_map_remove(map_, addr, addr + round_page(size))
