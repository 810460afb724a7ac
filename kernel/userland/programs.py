"""The synthetic user programs and each CPU's init, which together drive every path of
vm_glue in a default run.

Each CPU starts one ``init`` process (forked from proc0 by the CPU's boot thread). Once
every CPU has booted, init keeps ``user.procs_per_cpu`` children running, choosing each
new child's program by the ``user.*`` weights with a random source derived from the run's
seed, and reaps them with wait(2) as they exit. The programs:

* **forker**: forks children that compute briefly and exit, and waits for each
  (fork1 -> vm_forkproc, exit1, wait1 -> vm_waitproc); sometimes with RFMEM.
* **sleeper**: touches a little memory, then sleeps for ``user.sleep_s`` at a time: long
  enough to age past ``vm.swap_idle_threshold1`` and be swapped out; its wakeup makes it
  runnable while swapped out (setrunnable -> PS_SWAPINREQ -> the swapper's faultin), and it
  checks that its memory came back intact.
* **hog**: maps ``user.hog_pages`` pages, writes them all, reads them back checking every
  page, a few times over: memory pressure, paging to swap, VM_WAIT, swapout_procs.
* **sharer**: rfork(RFPROC|RFMEM) a child sharing its vmspace; the child then
  rfork(RFFDG) without RFPROC, which unshares the vmspace (vmspace_unshare).
* **debugger**: PHOLDs other processes and reads their U-area, as ps and procfs do (the
  hold swaps a swapped-out process in: faultin from _PHOLD, and the PS_SWAPPINGIN wait
  when the swapper is at it too).
* **syscaller**: useracc on good and bad buffers, physio-style vslock/vsunlock, kernacc.
* **napper**: naps a tick or three at a time (nanosleep, which needs no Giant), computing
  briefly in between and checking and rewriting its page every tenth nap, as a daemon
  polling a device does: asleep whenever swapout_procs looks (with
  ``vm.swap_idle_threshold1 = 0`` a candidate at once) and always about to wake, so a
  wakeup falls into any window between swapout_procs' checks and the swapout itself.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator

from smp.kernel import param
from smp.kernel.machine import cpu as md
from smp.kernel.sys.proc import PS
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.userland import libc
from smp.kernel.vm.vm import RFFDG, RFMEM, RFPROC, VM_PROT_READ, VM_PROT_WRITE

PAGE = param.PAGE_SIZE
PROGRAMS = ("forker", "sleeper", "hog", "sharer", "debugger", "syscaller", "napper")


def _cfg(key: str) -> Any:
    return md.pcpu.config[key]


def _rng() -> random.Random:
    """This process's random source: derived from the run's seed and its pid."""
    return md.random_source("proc", libc.getpid())


def _ticks(seconds: float) -> int:
    return max(int(seconds * param.hz), 1)


def prog_forker() -> None:
    rng = _rng()
    for i in range(rng.randint(2, 4)):
        flags = RFFDG | RFPROC | (RFMEM if rng.random() < 0.3 else 0)
        libc.fork(lambda: _child_exit(rng.randint(1, 5)), "forkee", flags)
        libc.compute(_cfg("user.compute_us"))
        libc.wait()
    libc.exit(0)


def _child_exit(code: int) -> None:
    libc.compute(_cfg("user.compute_us") / 2)
    libc.exit(code)


def prog_sleeper() -> None:
    rng = _rng()
    npages = rng.randint(2, 8)
    base = libc.mmap_anon(npages)
    gen = 1
    for i in range(npages):
        libc.touch(base + i * PAGE, True, gen)
    for _ in range(rng.randint(1, 3)):
        libc.sleep_ticks(_ticks(float(_cfg("user.sleep_s")) * rng.uniform(0.75, 1.5)))
        for i in range(npages):
            libc.touch(base + i * PAGE, False, gen)
        gen += 1
        for i in range(npages):
            libc.touch(base + i * PAGE, True, gen)
        libc.compute(_cfg("user.compute_us"))
    libc.exit(0)


def prog_hog() -> None:
    rng = _rng()
    npages = max(1, int(int(_cfg("user.hog_pages")) * rng.uniform(0.5, 1.0)))
    base = libc.mmap_anon(npages)
    for gen in range(1, rng.randint(2, 3) + 1):
        for i in range(npages):
            libc.touch(base + i * PAGE, True, gen)
            if i % 64 == 63:
                libc.compute(_cfg("user.compute_us") / 4)
        for i in range(npages):
            libc.touch(base + i * PAGE, False, gen)
        libc.sleep_ticks(_ticks(0.2))
    libc.munmap(base, npages)
    libc.exit(0)


def prog_sharer() -> None:
    base = libc.mmap_anon(2)
    libc.touch(base, True, 1)

    def child() -> None:
        libc.touch(base, False, 1, owner_pid=parent)     # the shared page, as written
        libc.fork(lambda: None, "unshare", RFFDG)        # no RFPROC: unshare the vmspace
        libc.touch(base, False, 1, owner_pid=parent)     # now a private copy
        libc.compute(_cfg("user.compute_us"))
        libc.exit(0)

    parent = libc.getpid()
    libc.fork(child, "sharee", RFFDG | RFPROC | RFMEM)
    libc.wait()
    libc.exit(0)


def prog_debugger() -> None:
    """A debugger (top, ps, procfs) that keeps looking at the process list and attaches
    to processes: first those the machine is bringing back in (a wakeup asked for them,
    or the swapper is at it: top's "<RUN>" and "<SWAP>"); else, now and then, the one
    swapped out longest, if for user.attach_after_s or more (a debugger attached to an
    idle daemon); else a resident one. Each attach holds the process in memory (PHOLD:
    a swapped-out one is faulted in) and reads its U-area. Recently swapped processes
    are left alone, so their U-areas stay out long enough to be laundered to swap."""
    rng = _rng()
    me = libc.getpid()
    after = float(_cfg("user.attach_after_s"))
    for _ in range(rng.randint(20, 40)):
        procs = [p for p in libc.list_procs() if p[0] != me]
        coming = [pid for pid, sflag, _ in procs
                  if sflag & (PS.PS_SWAPINREQ | PS.PS_SWAPPINGIN)]
        longest = max(((swtime, pid) for pid, sflag, swtime in procs
                       if not sflag & (PS.PS_INMEM | PS.PS_SWAPINREQ | PS.PS_SWAPPINGIN)
                       and swtime >= after), default=None)
        resident = [pid for pid, sflag, _ in procs if sflag & PS.PS_INMEM]
        if coming:
            targets = coming[:2]
        elif longest is not None and rng.random() < 0.3:
            targets = [longest[1]]
        else:
            targets = [rng.choice(resident)] if resident else []
        for pid in targets:
            libc.peek_uarea(pid)
        libc.sleep_ticks(_ticks(rng.uniform(0.05, 0.2)))
    libc.exit(0)


def prog_syscaller() -> None:
    rng = _rng()
    npages = rng.randint(1, 4)
    base = libc.mmap_anon(npages)
    for _ in range(rng.randint(2, 5)):
        if not libc.sys_useracc(base, npages * PAGE, VM_PROT_READ | VM_PROT_WRITE):
            md.pcpu.note_violation("useracc refused a buffer the program mapped")
        if libc.sys_useracc(0xBFBFF000, 2 * PAGE, VM_PROT_READ):
            md.pcpu.note_violation("useracc allowed a buffer beyond the user map")
        libc.sys_physio(base, npages * PAGE)
        libc.compute(_cfg("user.compute_us"))
    libc.exit(0)


def prog_napper() -> None:
    rng = _rng()
    base = libc.mmap_anon(1)
    gen = 1
    libc.touch(base, True, gen)
    for nap in range(rng.randint(100, 300)):
        libc.sleep_ticks(rng.randint(1, 3))          # nanosleep: no Giant
        libc.compute(_cfg("user.compute_us") / 4)
        if nap % 10 == 9:
            libc.touch(base, False, gen)
            gen += 1
            libc.touch(base, True, gen)
    libc.exit(0)


_MAINS: dict[str, Callable[[], None]] = {
    "forker": prog_forker, "sleeper": prog_sleeper, "hog": prog_hog,
    "sharer": prog_sharer, "debugger": prog_debugger, "syscaller": prog_syscaller,
    "napper": prog_napper,
}


def program_mix(weights: list[int], rng: random.Random) -> Iterator[str]:
    """The programs init starts, in proportion to their weights in every run of
    sum(weights) starts (smooth weighted round robin), from a seeded place in that cycle:
    each run gets the configured mix, so no seed leaves a machine without its hogs."""
    total = sum(weights)
    current = [0] * len(weights)
    n = 0
    skip = rng.randrange(total) if total else 0
    while total:
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        n += 1
        if n > skip:
            yield PROGRAMS[best]


def prog_init() -> None:
    """Keep the configured number of children running; reap them as they exit."""
    # PORT: FreeBSD's init first runs once mi_startup has run every SYSINIT, the APs'
    # start among them: user land never ran before the pageout daemon existed. Here each
    # CPU forks its init as it boots, so init starts nothing until every CPU has booted;
    # else an AP slow to boot (its locks contended) could find memory gone to the
    # programs, wait for memory in its own init's fork, and never make the pageout daemon
    # placed on it, the one thread that frees memory: a deadlock of the boot (a stress
    # campaign's run: no pagedaemon in ps, every fork in vmwait, the vm daemon unwoken).
    libc.wait_for_boot()
    rng = md.random_source("init", md.pcpu.cpuid)
    weights = [int(_cfg(f"user.{name}")) for name in PROGRAMS]
    want = int(_cfg("user.procs_per_cpu"))
    mix = program_mix(weights, rng)
    running = 0
    while True:
        while running < want and sum(weights) > 0:
            name = next(mix)
            libc.fork(_MAINS[name], name)
            md.pcpu.count(f"programs_{name}")
            running += 1
            libc.compute(_cfg("user.compute_us") / 2)
        err, _, _ = libc.wait()
        if err:
            libc.sleep_ticks(_ticks(0.5))        # no children (all weights 0)
        else:
            running -= 1


def init_start(_: Any) -> None:
    """Every CPU: fork this CPU's init from proc0 (the boot thread's process)."""
    if int(_cfg("user.procs_per_cpu")) == 0:
        return
    libc.fork(prog_init, f"init{md.pcpu.cpuid}")


SYSINIT("init", SI_SUB.SI_SUB_KTHREAD_INIT, SI_ORDER.SI_ORDER_ANY, init_start, percpu=True)
