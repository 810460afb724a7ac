"""Boot: from a bare CPU to a running kernel, after FreeBSD ``kern/init_main.c`` and the SMP
start-up of ``i386/mp_machdep.c``.

The boot CPU (cpu 0, the BSP) declares the kernel's structures to the server, then runs
every SYSINIT in order (``mi_startup``): the global locks, proc0 and thread0, vm_glue's
``vm_init_limits`` ... up to ``SI_SUB_SMP``, which releases the other CPUs (the APs) with an
IPI, and finally ``SI_SUB_RUN_SCHEDULER``, the swapper, which never returns. The boot stack
*is* thread0 (proc0's thread, the swapper), as in FreeBSD, when the swapper is placed on
cpu 0 (``kern.kthread_placement``); placed elsewhere, thread0 is handed to that CPU at the
end of ``SI_SUB_SMP`` (:func:`swapper_placement`) and the BSP's boot stack ends as an AP's.

An AP waits for the BSP's IPI, finds the kernel's globals through the server's symbol
table, and runs the per-CPU SYSINITs for itself (its idle thread, its kernel threads). Its
boot stack then becomes its idle thread.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern import (kern_fail, kern_globals, kern_idle, kern_proc, subr_counter,
                             subr_invariants,
                             subr_witness)
from smp.kernel.kern.kern_clock import hardclock
from smp.kernel.kern.kern_globals import struct_kernel
from smp.kernel.kern.kern_kthread import kthread_create, kthread_create_on, kthread_cpu, proc_link
from smp.kernel.kern.kern_mutex import (MTX_DEF, MTX_RECURSE, MTX_SPIN, mtx_init, mtx_lock,
                                        mtx_lock_spin, mtx_unlock, mtx_unlock_spin)
from smp.kernel.kern.kern_switch import RunQueue, ipi_setrunqueue, runq_add
from smp.kernel.kern.kern_sx import sx_init
from smp.kernel.kern.kern_synch import schedcpu, tsleep
from smp.kernel.kern.kern_thread import LocalThread, thread_attach, thread_exit
from smp.kernel.kern.kern_timeout import CalloutWheel
from smp.kernel.kern.subr_lock import lock_granted
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT, sysinits
from smp.kernel.sys.kstruct import TAILQ_INSERT_TAIL, register_all
from smp.kernel.sys.param import PRI_MAX, PVM
from smp.kernel.sys.proc import P, PRS, PS, TDS, struct_ksegrp, struct_proc, struct_thread
from smp.kernel.sys.user import U_SIGACTS, U_STATS, plimit_new
from smp.kernel.vm import (swap_pager, vm_glue, vm_glue_lines, vm_kern, vm_meter, vm_page,
                           vm_pageout)
from smp.kernel.vm.vm_map import vmspace_alloc


# -- SI_SUB_LOCK: the global locks ----------------------------------------------------------
def mutexinit(_: Any) -> None:
    g = struct_kernel.new(mp_naps=md.pcpu.ncpus - 1)
    kern_globals.set_globals(g)
    memory.symbol("kernel_globals", g.handle)
    mtx_init(g.Giant, "Giant", None, MTX_DEF | MTX_RECURSE)
    mtx_init(g.sched_lock, "sched lock", None, MTX_SPIN | MTX_RECURSE)
    sx_init(g.allproc_lock, "allproc")
    sx_init(g.proctree_lock, "proctree")
    kern_proc.proc_table_register(g.allproc, g.zombproc)


SYSINIT("mutexinit", SI_SUB.SI_SUB_LOCK, SI_ORDER.SI_ORDER_FIRST, mutexinit)

# init's wait for the APs (libc.wait_for_boot), for the liveness detector: a poll on
# &booted_cpus until every AP has booted. An AP whose boot never ends is then named where
# it shows first, before its absence shows elsewhere (a pageout daemon never made, say).
BOOT_WAITS: dict[str, dict[str, Any]] = {
    "boot": {"chan": "booted_cpus", "sum": ["booted_cpus"], "at_least": "mp_naps",
             "poll": True, "what": "every AP to finish its boot"},
}


def boot_waits_register(_: Any) -> None:
    md.register("waits", BOOT_WAITS)


SYSINIT("boot_waits", SI_SUB.SI_SUB_LOCK, SI_ORDER.SI_ORDER_ANY, boot_waits_register)


# -- SI_SUB_INTRINSIC: proc0 and thread0 ---------------------------------------------------
def proc0_init(_: Any) -> None:
    """proc0 is the swapper; the boot stack becomes its thread (thread0)."""
    G = kern_globals.G
    p = struct_proc.new(p_flag=int(P.P_SYSTEM), p_sflag=int(PS.PS_INMEM),
                        p_state=int(PRS.PRS_NORMAL), p_comm="swapper", p_pid=0,
                        p_oncpu=md.pcpu.cpuid, p_numthreads=1, p_numksegrps=1)
    mtx_init(p.p_mtx, "process lock", None, MTX_DEF)
    kg = struct_ksegrp.new(kg_proc=p)
    td = struct_thread.new(td_proc=p, td_ksegrp=kg, td_oncpu=md.pcpu.cpuid,
                           td_name="swapper", td_priority=PVM, td_base_pri=PVM,
                           td_state=int(TDS.TDS_RUNNING))
    TAILQ_INSERT_TAIL(p.p_ksegrps, kg)
    TAILQ_INSERT_TAIL(p.p_threads, td)
    TAILQ_INSERT_TAIL(kg.kg_threads, td)
    G.update(proc0=p, thread0=td)
    memory.list_insert_head(G.allproc, p.handle)
    memory.map_set(G.pidhashtbl, 0, p.handle)
    G.nprocs = 1
    _adopt_boot_stack(td, "swapper", PVM, p)


SYSINIT("proc0", SI_SUB.SI_SUB_INTRINSIC, SI_ORDER.SI_ORDER_FIRST, proc0_init)


def giant_boot(_: Any) -> None:
    """PORT: FreeBSD's boot thread holds Giant from init386 on, through every SYSINIT and
    into scheduler(); here it takes Giant as soon as it is a thread (proc0's)."""
    mtx_lock(kern_globals.G.Giant)
    # proc0's U-area, address space and limits (FreeBSD's proc0uarea, vmspace0, limit0)
    p = kern_globals.G.proc0
    vm_glue.vm_proc_new(p)
    up = p.p_uarea
    p.update(p_vmspace=vmspace_alloc(), p_limit=plimit_new(), p_stats=up + U_STATS,
             p_sigacts=up + U_SIGACTS)


SYSINIT("giant_boot", SI_SUB.SI_SUB_INTRINSIC, SI_ORDER.SI_ORDER_SECOND, giant_boot)


def _adopt_boot_stack(td: Any, name: str, pri: int, p: Any) -> LocalThread:
    """The running boot stack becomes the thread ``td``."""
    ctx = md.curctx()
    lt = LocalThread(td, name, pri)
    lt.ctx, lt.proc = ctx, p
    md.rename_context(ctx, lt.tid, name, lt)
    md.pcpu.threads[lt.tid] = lt
    return lt


# -- SI_SUB_VM_CONF (per CPU): find the VM's globals, take the config's tunables -------------
def machine_attach(_: Any) -> None:
    cfg = md.pcpu.config
    vm_page.vm_attach()
    vm_kern.kmem_attach()
    swap_pager.swap_attach()
    vm_glue.sysctl_init(cfg)
    vm_pageout.vm_pageout_sysctl(cfg)
    kern_fail.configure(list(cfg["debug.fail_points"]))


SYSINIT("machine_attach", SI_SUB.SI_SUB_VM_CONF, SI_ORDER.SI_ORDER_SECOND, machine_attach,
        percpu=True)


# -- SI_SUB_SCHED_IDLE (per CPU): the idle thread -------------------------------------------
def idle_setup(_: Any) -> None:
    """kern_idle.c: each CPU's idle process, ``idle: cpuN``, ``P_NOLOAD``, never on a run
    queue. An AP made its own before it took any lock (ap_boot) and links it here."""
    pc = md.pcpu
    if pc.idlethread is None:
        pc.idlethread = _idle_proc_new(link=True)
    else:
        proc_link(pc.idlethread.proc)


def _idle_proc_new(link: bool) -> LocalThread:
    return kthread_create(kern_idle.idle_proc, f"idle: cpu{md.pcpu.cpuid}", PRI_MAX,
                          run=False, link=link, flags=int(P.P_NOLOAD))


SYSINIT("idle_setup", SI_SUB.SI_SUB_SCHED_IDLE, SI_ORDER.SI_ORDER_FIRST, idle_setup,
        percpu=True)


# -- SI_SUB_KTHREAD_IDLE: schedcpu, once a simulated second ---------------------------------
def schedcpu_thread() -> None:
    G = kern_globals.G
    while True:
        tsleep(G.addr("ticks"), PVM, "schedcpu", param.hz)
        schedcpu()


def schedcpu_setup(_: Any) -> None:
    kthread_create_on("schedcpu", schedcpu_thread, PVM)


SYSINIT("schedcpu", SI_SUB.SI_SUB_KTHREAD_IDLE, SI_ORDER.SI_ORDER_FIRST, schedcpu_setup,
        percpu=True)


# -- SI_SUB_SMP: start the application processors -------------------------------------------
def release_aps(_: Any) -> None:
    for cpu in range(1, md.pcpu.ncpus):
        md.ipi(cpu, "ap_start", [])


SYSINIT("release_aps", SI_SUB.SI_SUB_SMP, SI_ORDER.SI_ORDER_FIRST, release_aps)


# -- SI_SUB_SMP (last): the swapper's CPU ----------------------------------------------------
def swapper_placement(_: Any) -> None:
    """PORT: the swapper (thread0, proc0's thread) runs ``scheduler()``, the last SYSINIT,
    on the boot stack of the CPU ``kern.kthread_placement`` gives it. On cpu 0 that is the
    BSP's boot stack, as in FreeBSD, and this returns. Otherwise the BSP gives thread0 up:
    it lets go of the Giant it has held since ``giant_boot``, its boot stack becomes a boot
    thread like an AP's, thread0 is handed to its CPU (``td_oncpu``, then an IPI), and
    the boot stack dies into cpu 0's idle thread. The other CPU gives thread0 a new stack
    that takes Giant and runs the "scheduler" SYSINIT (:func:`_swapper_main`)."""
    cpu = kthread_cpu("swapper")
    pc = md.pcpu
    if cpu == pc.cpuid:
        return
    G = kern_globals.G
    td0, p0 = G.thread0, G.proc0
    mtx_unlock(G.Giant)
    td = struct_thread.new(td_proc=p0, td_ksegrp=td0.td_ksegrp, td_oncpu=pc.cpuid,
                           td_name=f"boot: cpu{pc.cpuid}", td_priority=PVM, td_base_pri=PVM,
                           td_state=int(TDS.TDS_RUNNING))
    pc.threads.pop(td0.handle, None)
    _adopt_boot_stack(td, f"boot: cpu{pc.cpuid}", PVM, p0)
    mtx_lock_spin(G.sched_lock)
    td0.td_oncpu = cpu
    td0.td_state = int(TDS.TDS_RUNQ)
    mtx_unlock_spin(G.sched_lock)
    md.ipi(cpu, "swapper", [td0.handle])
    thread_exit()


SYSINIT("swapper_placement", SI_SUB.SI_SUB_SMP, SI_ORDER.SI_ORDER_ANY, swapper_placement)

_ap_booted = False          # this AP ran its per-CPU SYSINITs (the swapper may start)
_swapper_pending = 0        # thread0, handed to this CPU before it finished booting


def _swapper_main() -> None:
    """thread0's first code on the CPU it was handed to: Giant, as the boot thread held
    it, then the "scheduler" SYSINIT (vm_glue's ``scheduler()``, which never returns)."""
    mtx_lock(kern_globals.G.Giant)
    for si in sysinits():
        if si.name == "scheduler":
            si.func(si.udata)
    md.panic("swapper: the scheduler SYSINIT returned")


def _start_swapper(tid: int) -> None:
    """The swapper IPI (interrupt context): give thread0 a stack here and queue it (its
    ``td_state`` is already TDS_RUNQ); an AP still booting starts it when done."""
    global _swapper_pending
    if not _ap_booted:
        _swapper_pending = tid
        return
    _swapper_pending = 0
    lt = thread_attach(struct_thread.at(tid), "swapper", PVM, _swapper_main)
    lt.proc = kern_globals.G.proc0
    runq_add(lt, PVM)


# -- interrupt vectors ----------------------------------------------------------------------
def _ipi(src: int, kind: str, args: Any) -> None:
    if kind == "setrunqueue":
        ipi_setrunqueue(args)
    elif kind == "ap_start":
        md.pcpu.ap_started = True
    elif kind == "swapper":
        _start_swapper(int(args[0]))
    else:
        md.panic(f"unknown IPI {kind!r} from cpu {src}")


def _final_check() -> None:
    """The machine asks for the end-of-run check (an interrupt)."""
    if kern_globals.G is None or md.pcpu.idlethread is None:
        md.final_check_done()               # still booting: nothing of ours to check yet
    else:
        subr_invariants.request_final_check()


def _describe(ctx: Any) -> dict[str, Any]:
    lt = ctx.kdata
    if lt is None:
        return {"state": "boot"}
    return {"runnable": lt.on_runq, "blocked_on": lt.blocked_on,
            "locks_owned": sorted(lt.owned), "critnest": ctx.critnest}


def _machine_setup(hw: Any, config: dict[str, Any]) -> None:
    param.configure(config)
    pc = md.attach(hw, param.ncpus, config)
    pc.runq = RunQueue()
    pc.callouts = CalloutWheel()
    md.install(on_clock=hardclock, on_ipi=_ipi, on_grant=lock_granted, on_final=_final_check,
               describe=_describe, final_report=lambda: _final_report(pc))


def _final_report(pc: Any) -> dict[str, Any]:
    return {**dict(sorted(pc.stats.items())), "violations": pc.violations,
            "findings": pc.findings, "console": pc.console,
            "lock_waits": [[lock, list(stack), int(n), round(s, 6)]
                           for (lock, stack), (n, s) in pc.lock_waits.items()]}


def _run_sysinits(percpu_only: bool) -> None:
    for si in sysinits(None if not percpu_only else True):
        si.func(si.udata)


def bsp_boot() -> None:
    """cpu 0: mi_startup. Never returns (the last SYSINIT is the swapper)."""
    register_all()
    # the C line each line of vm_glue.py ports, for reports that name both; not once
    # vm_glue.py was edited after the table was made (its lines would be named wrong)
    if vm_glue_lines.fresh():
        md.register("sources", {vm_glue_lines.PORT: [vm_glue_lines.C_FILE,
                                                      vm_glue_lines.LINES]})
    else:
        md.printf(f"{vm_glue_lines.PORT} changed since its line table was made: no "
                  f"{vm_glue_lines.C_FILE} lines named (python -m smp.hunt.cmap makes it anew)")
    subr_witness.witness_register()
    vm_meter.vmmeter_register()
    subr_counter.counters_register()
    _run_sysinits(percpu_only=False)
    md.panic("mi_startup: the last SYSINIT (the swapper) returned")


def ap_boot() -> None:
    """An AP: wait for the BSP, make this CPU's idle thread, run the per-CPU SYSINITs on
    the boot stack, then let the boot stack die into the idle thread."""
    pc = md.pcpu
    while not pc.ap_started:
        md.idle_wait()
    kern_globals.set_globals(struct_kernel_at(memory.lookup("kernel_globals")))
    G = kern_globals.G
    p0 = G.proc0
    # The idle thread exists before the boot stack takes any lock, so that a contended
    # lock during start-up has somewhere to switch to; its process goes on allproc (which
    # takes allproc_lock) in idle_setup.
    pc.idlethread = _idle_proc_new(link=False)
    # in proc0's ksegrp, as thread0: the per-CPU SYSINITs fork, and a fork may sleep
    # (VM_WAIT when memory is short already at boot)
    td = struct_thread.new(td_proc=p0, td_ksegrp=G.thread0.td_ksegrp, td_oncpu=pc.cpuid,
                           td_name=f"boot: cpu{pc.cpuid}", td_priority=PVM, td_base_pri=PVM,
                           td_state=int(TDS.TDS_RUNNING))
    _adopt_boot_stack(td, f"boot: cpu{pc.cpuid}", PVM, p0)
    _run_sysinits(percpu_only=True)
    memory.atomic_add(G.handle, "booted_cpus", 1)
    global _ap_booted
    _ap_booted = True
    if _swapper_pending:
        _start_swapper(_swapper_pending)
    thread_exit()


def struct_kernel_at(h: int) -> Any:
    g = struct_kernel.at(h)
    if g is None:
        md.panic("ap_boot: the BSP published no kernel globals")
    return g


def boot(hw: Any, config: dict[str, Any]) -> Any:
    """Prepare this CPU (``hw``: its hardware, handed to the machine-dependent layer) and
    return the boot context for ``hw.run``."""
    _machine_setup(hw, config)
    fn = bsp_boot if md.pcpu.cpuid == 0 else ap_boot
    return md.new_context(0, "boot", fn)
