"""Constants of the vm system (``vm/vm.h``, ``vm/vm_page.h``, ``vm/vm_object.h``,
``vm/vm_pager.h``, ``vm/vm_pageout.h``, ``sys/unistd.h``) and the page arithmetic of
``machine/param.h``."""

from __future__ import annotations

from smp.kernel.param import PAGE_SIZE

# vm_prot_t (vm/vm.h)
VM_PROT_NONE = 0x00
VM_PROT_READ = 0x01
VM_PROT_WRITE = 0x02
VM_PROT_EXECUTE = 0x04
VM_PROT_ALL = VM_PROT_READ | VM_PROT_WRITE | VM_PROT_EXECUTE
VM_PROT_DEFAULT = VM_PROT_ALL

# vm_inherit_t
VM_INHERIT_SHARE = 0
VM_INHERIT_COPY = 1
VM_INHERIT_NONE = 2

# vm_page_alloc() requests (vm/vm_page.h)
VM_ALLOC_NORMAL = 0
VM_ALLOC_INTERRUPT = 1
VM_ALLOC_SYSTEM = 2
VM_ALLOC_CLASS_MASK = 3
VM_ALLOC_WIRED = 0x0020
VM_ALLOC_ZERO = 0x0040
VM_ALLOC_RETRY = 0x0080
VM_ALLOC_NOOBJ = 0x0100

# page queues (PQ_*)
PQ_NONE = 0
PQ_FREE = 1
PQ_INACTIVE = 2
PQ_ACTIVE = 3
PQ_CACHE = 4
PQ_NAMES = {PQ_NONE: "none", PQ_FREE: "free", PQ_INACTIVE: "inactive",
            PQ_ACTIVE: "active", PQ_CACHE: "cache"}

# vm_page flags (PG_*)
PG_BUSY = 0x0001
PG_WANTED = 0x0002
PG_WINATCFLS = 0x0004
PG_FICTITIOUS = 0x0008
PG_WRITEABLE = 0x0010
PG_MAPPED = 0x0020
PG_ZERO = 0x0040
PG_REFERENCED = 0x0080
PG_CLEANCHK = 0x0100
PG_SWAPINPROG = 0x0200
PG_NOSYNC = 0x0400
PG_UNMANAGED = 0x0800
PG_MARKER = 0x1000

VM_PAGE_BITS_ALL = 0xFF

# object types (OBJT_*)
OBJT_DEFAULT = 0
OBJT_SWAP = 1
OBJT_VNODE = 2
OBJT_DEVICE = 3
OBJT_PHYS = 4
OBJT_DEAD = 5

# pager results (VM_PAGER_*)
VM_PAGER_OK = 0
VM_PAGER_BAD = 1
VM_PAGER_FAIL = 2
VM_PAGER_PEND = 3
VM_PAGER_ERROR = 4
VM_PAGER_AGAIN = 5

# swapout requests (vm/vm_pageout.h)
VM_SWAP_NORMAL = 1
VM_SWAP_IDLE = 2

# vm_map_entry flags
MAP_ENTRY_NOSYNC = 0x0001
MAP_ENTRY_IS_SUB_MAP = 0x0002
MAP_ENTRY_COW = 0x0004
MAP_ENTRY_NEEDS_COPY = 0x0008
MAP_ENTRY_NOFAULT = 0x0010
MAP_ENTRY_USER_WIRED = 0x0020

# KERN_* return codes (mach)
KERN_SUCCESS = 0
KERN_INVALID_ADDRESS = 1
KERN_PROTECTION_FAILURE = 2
KERN_NO_SPACE = 3
KERN_INVALID_ARGUMENT = 4
KERN_FAILURE = 5
KERN_RESOURCE_SHORTAGE = 6

# rfork(2) flags (sys/unistd.h)
RFNAMEG = 1 << 0
RFENVG = 1 << 1
RFFDG = 1 << 2
RFNOTEG = 1 << 3
RFPROC = 1 << 4
RFMEM = 1 << 5
RFNOWAIT = 1 << 6
RFCFDG = 1 << 12
RFTHREAD = 1 << 13
RFSIGSHARE = 1 << 14
RFLINUXTHPN = 1 << 16
RFSTOPPED = 1 << 17
RFHIGHPID = 1 << 18
RFPPWAIT = 1 << 31

TRUE = 1
FALSE = 0


def trunc_page(x: int) -> int:
    return x & ~(PAGE_SIZE - 1)


def round_page(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def atop(x: int) -> int:
    return x // PAGE_SIZE


def ptoa(x: int) -> int:
    return x * PAGE_SIZE
