"""The kernel's files, after FreeBSD's ``sys/conf/files``: every subsystem of this kernel.

Importing this module imports each of them, and importing a subsystem declares what it
contributes: its SYSINITs (``kernel/sys/kernel.py``), its structures (``KStruct``), its fail
points (``kernel/kern/kern_fail.py``). A CPU boots through it (:func:`boot`), and anything
that wants the kernel's declarations without booting (``smp failpoints``) imports it.
"""

from __future__ import annotations

from smp.kernel.kern import (init_main, kern_chaos, kern_clock, kern_exit, kern_fail,  # noqa: F401
                             kern_fork, kern_globals, kern_idle, kern_kthread, kern_lock,
                             kern_mutex, kern_proc, kern_switch, kern_sx, kern_synch,
                             kern_thread, kern_timeout, subr_counter, subr_invariants,
                             subr_lock, subr_witness, sysv_shm)
from smp.kernel.machine import cpu, lock, memory, pmap, swtch, vm_machdep  # noqa: F401
from smp.kernel.sys import kernel, kstruct, param, proc, user  # noqa: F401
from smp.kernel.vm import (swap_pager, vm, vm_fault, vm_glue, vm_kern, vm_map,  # noqa: F401
                           vm_meter, vm_object, vm_page, vm_pageout)
from smp.kernel import userland  # noqa: F401

boot = init_main.boot
