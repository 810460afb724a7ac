"""Golden output: what a kernel developer reads, in FreeBSD's shapes, from synthetic
reports (no machine runs here; the shapes of real runs are checked in test_installed.py).

Each expected text is quoted beside the FreeBSD output it imitates. A change to these
shapes is a change to what users read: update the golden text on purpose, and the README
block that shows it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from smp.observe.summary import summary_table, verdict

pytestmark = pytest.mark.quick


def _frame(path: str, line: int, func: str, code: str = "pass") -> str:
    return f'  File "{path}", line {line}, in {func}\n    {code}'


HW = "/opt/smp/hw/cpu.py"


def _line_of(statement: str, after: str) -> int:
    """The line of kernel/vm/vm_glue.py where ``statement`` first comes after ``after``:
    the findings below sit on the statements F2 is pinned to, wherever they move."""
    import pathlib
    src = (pathlib.Path(__file__).resolve().parent.parent / "kernel/vm/vm_glue.py")
    lines = src.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i in range(start, len(lines)) if statement in lines[i]) + 1


SET_SWAPPED = f"vm/vm_glue.py:{_line_of('TD_SET_SWAPPED(td)', 'def swapout(')}"
CLR_SWAPPED = f"vm/vm_glue.py:{_line_of('TD_CLR_SWAPPED(td)', 'def faultin(')}"
K = "/opt/smp/kernel"
PANIC_STACK = [
    _frame(HW, 164, "trampoline", "fn()"),
    _frame(f"{K}/kern/kern_thread.py", 74, "<lambda>", "lambda: fork_exit(fn)"),
    _frame(f"{K}/kern/kern_thread.py", 96, "fork_exit", "fn()"),
    _frame(f"{K}/vm/vm_pageout.py", 189, "vm_daemon", "swapout_procs(req)"),
    _frame(f"{K}/vm/vm_glue.py", 640, "swapout_procs", "KASSERT(vm is not None,"),
    _frame(f"{K}/kern/kern_mutex.py", 159, "KASSERT", "md.panic(msg)"),
    _frame(f"{K}/machine/cpu.py", 198, "panic", 'pcpu.hw.panic(f"panic: {message}")'),
]
SLEEP_STACK = [
    _frame(HW, 164, "trampoline", "fn()"),
    _frame(f"{K}/kern/kern_thread.py", 96, "fork_exit", "fn()"),
    _frame(f"{K}/userland/lockload.py", 93, "lockload_thread", "mtx_lock(G.Giant)"),
    _frame(f"{K}/kern/kern_mutex.py", 73, "mtx_lock", "_lock_block(lt, m)"),
    _frame(f"{K}/kern/kern_synch.py", 164, "mi_switch", "switch_to(nxt.ctx)"),
    _frame(HW, 191, "switch_to", "ctx.glet.switch()"),
]


def _cpu(i: int, pid: int, ticks: tuple[int, ...], lost: int, **kw: int) -> dict[str, Any]:
    return {"id": i, "pid": pid, "ticks": dict(zip(("user", "nice", "sys", "intr", "idle",
                                                    "spin"), ticks)),
            "ctxsw": kw.get("ctxsw", 0), "lock_acquires": kw.get("locks", 0),
            "lock_contested": kw.get("contested", 0), "mem_ops": kw.get("mem", 0),
            "clock": {"ticks_lost": lost, "model": "virtual"}}


def _held(lock: str, mode: str, cls: str, addr: int, site: str, r: int = 0) -> dict[str, Any]:
    return {"lock": lock, "mode": mode, "class": cls, "addr": addr, "site": site,
            "recurse": r}


GIANT = _held("Giant", "excl", "sleep mutex", 0x10400, "kern/kern_synch.py:56", 1)
ALLPROC = _held("allproc", "shared", "sx", 0x10402, "vm/vm_glue.py:590")
PROC = _held("process lock", "excl", "sleep mutex", 0x18d02, "kern/kern_proc.py:43")

REPORT: dict[str, Any] = {
    "ok": False, "seed": 1649436113, "duration_sim_s": 1.511, "wall_s": 3.3,
    "reason": "panic on cpu 0: panic: swapout_procs: a process has no address space",
    "interrupted": False,
    "cpus": [_cpu(0, 30262, (3, 0, 60, 2, 90, 45), 3, ctxsw=260, locks=1313, contested=378,
                  mem=12053),
             _cpu(1, 30263, (2, 0, 28, 5, 82, 34), 7, ctxsw=227, locks=817, contested=334,
                  mem=4755)],
    "locks": [
        {"name": "sched lock", "acquires": 1971, "contested": 1022, "cpus_seen": [0, 1],
         "max_hold_us": 56300.0, "wait_us_total": 1620000.0},
        {"name": "vm page queue free mutex", "acquires": 323, "contested": 0,
         "cpus_seen": [0, 1], "max_hold_us": 9400.0, "wait_us_total": 0.0},
        {"name": "Giant", "acquires": 355, "contested": 121, "cpus_seen": [0, 1],
         "max_hold_us": 224100.0, "wait_us_total": 26230000.0},
        {"name": "never taken", "acquires": 0, "contested": 0, "cpus_seen": [],
         "max_hold_us": 0.0, "wait_us_total": 0.0},
    ],
    "kernel": {"forks": 22, "forks_rfmem": 1, "exits": 3, "waits": 3, "swapouts": 3,
               "swapins": 0, "pages_swapped_out": 64, "pages_swapped_in": 1, "pageins": 1,
               "vm_waits": 3, "phold_calls": 8, "invariant_checks": 16},
    "invariants": [],
    "findings": [
        {"detector": "lockkey", "summary": "unlocked load of thread.td_inhibitors (j: needs "
         f"sched lock) @ {SET_SWAPPED}", "sites": [SET_SWAPPED]},
        {"detector": "lockkey", "summary": "unlocked store of thread.td_state (j: needs "
         f"sched lock) @ {SET_SWAPPED}", "sites": [SET_SWAPPED]},
        {"detector": "witness", "summary": "lock order reversal: process lock -> allproc "
         "(established: allproc -> process lock)", "sites": []},
    ],
    "problems": [],
    "panic": {"message": "panic: swapout_procs: a process has no address space", "cpu": 0,
              "tid": 306, "thread": "vmdaemon", "site": "vm/vm_glue.py:640",
              "stack": PANIC_STACK, "source": "cpu", "sim_time": 1.5114, "op": 4411},
    "threads": [
        {"cpu": 0, "tid": 306, "name": "vmdaemon", "stack": PANIC_STACK + [
            _frame(HW, 380, "panic", "self._check_halt()")],
         "held": [GIANT, ALLPROC, PROC], "waiting": None},
        {"cpu": 0, "tid": 290, "name": "lockload0.0", "stack": SLEEP_STACK, "held": [],
         "waiting": _held("Giant", "excl", "sleep mutex", 0x10400,
                          "userland/lockload.py:93")},
        {"cpu": 1, "tid": 422, "name": "napper", "stack": SLEEP_STACK[:2],
         "held": [_held("user map", "excl", "lockmgr", 0x1a300, "vm/vm_map.py:86")],
         "waiting": _held("process lock", "excl", "sleep mutex", 0x18d02,
                          "kern/kern_proc.py:43")},
        {"cpu": 1, "tid": 330, "name": "idle: cpu1", "stack": [], "held": [],
         "waiting": None},
    ],
    # the process table as the kernel registered it, and each CPU's last operations
    "policy": {"liveness": {"inhibitor_bits": {"SUSPENDED": 1, "SLEEPING": 2, "SWAPPED": 4,
                                               "LOCK": 8}},
               "procs": {"thread_states": {"33": "TDS_INHIBITED", "36": "TDS_RUNNING"},
                         "flag_bits": {"INMEM": 1, "SWAPINREQ": 0x100},
                         "fields": {"pid": "p_pid", "flags": "p_sflag", "pflag": "p_flag",
                                    "holds": "p_lock"},
                         "thread_fields": {"tdstate": "td_state",
                                           "inhibitors": "td_inhibitors"}}},
    "procs": [{"pid": 12, "ppid": 0, "addr": "proc#352", "comm": "vmdaemon",
               "state": "CPU0", "cpu": 0, "flags": 1, "pflag": 0x204, "holds": 0,
               "wchan": None, "tdstate": 36, "inhibitors": 0, "swapped": False},
              {"pid": 3, "ppid": 1, "addr": "proc#349", "comm": "napper",
               "state": "LOCK", "cpu": 1, "flags": 0, "pflag": 0x4000, "holds": 1,
               "wchan": None, "tdstate": 33, "inhibitors": 12, "swapped": True}],
    "recent": {"0": [[4410, "LOADN", "vm/vm_glue.py:639", 306, 1511300000,
                      "[352, ['p_vmspace']]", "[None]"]],
               "1": [[4409, "STORE", "kern/kern_proc.py:43", 422, 1511280000,
                      "[349, 'p_lock', 1]", ""]]},
}


# -- the end-of-run summary -------------------------------------------------------------------
# It imitates no single FreeBSD command: the CPU table is top -P's per-CPU states (% of
# cp_time ticks: "CPU 0:  0.7% user,  0.0% nice, 38.6% system,  0.0% interrupt, 45.3% idle"),
# the lock table is LOCK_PROFILING's debug.lock.prof.stats reduced to a lock per row
# ("max wait_max total wait_total count avg wait_avg cnt_hold cnt_lock name"), and the
# panic is vpanic()'s "panic: %s" / "cpuid = %d".
SUMMARY = """\
cpu   pid user  sys intr spin idle ctxsw locks contested mem ops lost
  0 30262  1.5 30.0  1.0 22.5 45.0   260  1313       378   12053    3
  1 30263  1.3 18.5  3.3 22.5 54.3   227   817       334    4755    7
(user..idle: % of the CPU's clock ticks; lost: clock ticks it missed)

kernel  22 forks (1 with RFMEM), 3 exits, 3 waits, 8 PHOLDs, 3 vm_waits
swap    3 processes out, 0 in; 64 pages out, 1 in (1 page fault)
checks  16 invariant checks, 0 violations

lock                     acquires contested cpus max hold ms wait s
Giant                         355       121    2       224.1  26.23
sched lock                   1971      1022    2        56.3   1.62
vm page queue free mutex      323         0    2         9.4   0.00
(wait: simulated s summed over waiting threads, costliest first)

panic: swapout_procs: a process has no address space
cpuid = 0; vmdaemon (tid 306) at vm/vm_glue.py:640, operation 4411; the dump is
in crash.txt
new [witness] lock order reversal: process lock -> allproc (established: allproc
-> process lock)
known: F2 x2 (bugs of the 2002 code: FINDINGS.md)
FAILED: 1.5 simulated s in 3.3 wall s, seed 1649436113 (panic on cpu 0)"""


def test_summary_golden() -> None:
    assert summary_table(REPORT) == SUMMARY


def test_lock_waits_are_in_the_time_the_lock_table_kept() -> None:
    # virtual time: the server times waits by the requests' simulated times; wall time:
    # by the host's clock
    wall = dict(REPORT, cpus=[dict(c, clock=dict(c["clock"], model="wall"))
                              for c in REPORT["cpus"]])
    assert "(wait: host s summed" in summary_table(wall)
    assert "(wait: simulated s summed" in summary_table(REPORT)


def test_an_invariant_said_again_and_again_is_shown_once_with_a_count() -> None:
    said = ["cpu1: U-area of pid 35 reads pid 0: lost or corrupted across swap"] * 20 + [
        "cpu0: U-area of pid 35 reads pid 0: lost or corrupted across swap"] * 3 + [
        "cpu0: swap accounting off by 2 pages", "allproc holds 3 zombies"]
    text = summary_table(dict(REPORT, invariants=said), width=200)
    assert [line for line in text.splitlines() if line.startswith("invariant:")] == [
        "invariant: U-area of pid 35 reads pid 0: lost or corrupted across swap (cpu0, "
        "cpu1; 23 times)",
        "invariant: cpu0: swap accounting off by 2 pages",
        "invariant: allproc holds 3 zombies"]


def test_the_summary_shows_the_kernel_console() -> None:
    """What the kernel printed (vm_glue.c's "NULL sigacts" printf, a stale line table)
    is in the summary, with its CPU; a long console is counted, not flooded."""
    cpus = [dict(REPORT["cpus"][0], console=["PID:7 NULL sigacts with refcnt not 1!"]),
            dict(REPORT["cpus"][1], console=[f"line {i}" for i in range(7)])]
    text = summary_table(dict(REPORT, cpus=cpus))
    assert "console: cpu 0: PID:7 NULL sigacts with refcnt not 1!" in text
    assert "console: cpu 1: line 4" in text and "line 5" not in text
    assert "console: 2 more lines in report.json (cpus[].console)" in text


def test_summary_fits_80_columns_however_long_the_names_and_counts() -> None:
    """Issue 16: a lock name longer than 16 characters shifted its row, and the per-CPU
    table was 83 columns wide."""
    r = copy.deepcopy(REPORT)
    r["cpus"] = [_cpu(i, 4194300 + i, (10**9, 0, 10**9, 10**9, 10**9, 10**9), 10**6,
                      ctxsw=123456789, locks=98765432, contested=9999999, mem=1234567890)
                 for i in range(32)]
    r["locks"][2]["name"] = "a lock whose name is longer than any column"
    r["locks"][2]["wait_us_total"] = 9.9e13
    text = summary_table(r)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "123.5M 98.8M     10.0M    1.2G 1.0M" in text
    rows = [line for line in text.splitlines() if line[:1] == "a" or "sched lock" in line]
    assert rows[0].startswith("a lock whose name is longer ") and rows[0].endswith("99000000")
    # the numbers of every lock row start in the same column
    header = next(line for line in text.splitlines() if line.startswith("lock "))
    sched = next(line for line in text.splitlines() if line.startswith("sched lock"))
    assert sched.index("1971") + 4 == header.index("acquires") + len("acquires")


def test_summary_of_a_clean_run_says_ok_and_shows_no_trouble() -> None:
    r = copy.deepcopy(REPORT)
    r.update(ok=True, reason="end of run", panic=None, findings=[])
    text = summary_table(r)
    assert text.splitlines()[-1] == "ok: 1.5 simulated s in 3.3 wall s, seed 1649436113 " \
                                    "(end of run)"
    assert "panic" not in text and "known" not in text


def test_ctrl_c_is_stopped_by_sigint_not_failed() -> None:
    r = copy.deepcopy(REPORT)
    r.update(ok=False, reason="stopped by SIGINT", interrupted=True, panic=None, findings=[])
    assert verdict(r) == "stopped by SIGINT"
    assert summary_table(r).splitlines()[-1].startswith("stopped by SIGINT: 1.5 simulated s")
    r["invariants"] = ["page accounting does not balance"]
    assert verdict(r) == "FAILED"                   # interrupted, and something was wrong


def test_known_findings_are_one_line_per_id_with_a_count() -> None:
    r = copy.deepcopy(REPORT)
    r["findings"] = [
        {"detector": "lockkey", "summary": f"unlocked {how} of thread.{field} (j: needs "
         f"sched lock) @ {site}", "sites": [site]}
        for site in (SET_SWAPPED, CLR_SWAPPED)
        for how, field in (("load", "td_inhibitors"), ("store", "td_inhibitors"),
                           ("store", "td_state"))]
    lines = [line for line in summary_table(r).splitlines() if "F2" in line]
    assert lines == ["known: F2 x6 (bugs of the 2002 code: FINDINGS.md)"]


def test_a_new_finding_says_the_operation_it_was_found_at() -> None:
    """What `smp replay RUN_DIR --until N` needs to stop the machine there: a finding of
    the liveness detector has a simulated time, and an operation was a guess."""
    from smp.observe.summary import trouble_lines
    r = copy.deepcopy(REPORT)
    r["findings"] = [{"detector": "liveness", "summary": "lost wakeup: thread 7", "sites": [],
                      "op": 145210}, {"detector": "test", "summary": "no op", "sites": []}]
    assert [line for line in trouble_lines(r) if line.startswith("new")] == [
        "new [liveness] lost wakeup: thread 7 (found at operation 145210)",
        "new [test] no op"]
    r.update(ok=True, panic=None, reason="end of run")       # findings do not fail a run:
    assert summary_table(r, 200).splitlines()[-1].endswith(  # the last line counts them
        "(end of run); 2 new findings above, which a stress campaign counts as failures")


# -- crash.txt --------------------------------------------------------------------------------
# FreeBSD, kern_shutdown.c vpanic():          printf("panic: %s\n", buf);
#                                             printf("cpuid = %d\n", PCPU_GET(cpuid));
#                                             printf("time = %jd\n", (intmax_t )time_second);
#                                             kdb_backtrace();   /* "KDB: stack backtrace:" */
# and ddb's trace, innermost first:           swapout_procs() at swapout_procs+0x1c5/frame 0x...
# subr_witness.c, `show alllocks`:            db_printf("Process %d (%s) thread %p (%d)\n", ...)
# witness_list_lock(), newest lock first:     "%s %s %s" (exclusive|shared, lc_name, lo_name)
#                                             " r = %d (%p) locked @ %s:%d\n"
#   e.g. "exclusive sleep mutex Giant (Giant) r = 1 (0xc05b3f40) locked @ kern/kern_synch.c:56"
# ddb `show allchains`: " thread 100057 (pid 12, vmdaemon) blocked on lock 0x... (sleep mutex)
# "Giant"", grouped here by lock; `alltrace`: "Tracing command vmdaemon pid 12 tid 100057".
CRASH = """\
panic: swapout_procs: a process has no address space
cpuid = 0
time = 1.511 (simulated s)
KDB: stack backtrace:
panic() at machine/cpu.py:198
KASSERT() at kern/kern_mutex.py:159
swapout_procs() at vm/vm_glue.py:640
vm_daemon() at vm/vm_pageout.py:189
fork_exit() at kern/kern_thread.py:96
[ thread tid 306 (vmdaemon) on cpu 0 at vm/vm_glue.py:640 ]

db> show alllocks
Thread 306 (vmdaemon) on cpu 0
exclusive sleep mutex process lock r = 0 (0x18d02) locked @ kern/kern_proc.py:43
shared sx allproc r = 0 (0x10402) locked @ vm/vm_glue.py:590
exclusive sleep mutex Giant r = 1 (0x10400) locked @ kern/kern_synch.py:56
Thread 422 (napper) on cpu 1
exclusive lockmgr user map r = 0 (0x1a300) locked @ vm/vm_map.py:86

db> show allchains
chain 1: "Giant" (sleep mutex 0x10400)
  held by thread 306 (vmdaemon, cpu 0), not blocked on a lock
  waiting: thread 290 (lockload0.0, cpu 0) @ userland/lockload.py:93
chain 2: "process lock" (sleep mutex 0x18d02)
  held by thread 306 (vmdaemon, cpu 0), not blocked on a lock
  waiting: thread 422 (napper, cpu 1) @ kern/kern_proc.py:43

db> alltrace
Tracing tid 306 (vmdaemon) on cpu 0:
panic() at machine/cpu.py:198
KASSERT() at kern/kern_mutex.py:159
swapout_procs() at vm/vm_glue.py:640
vm_daemon() at vm/vm_pageout.py:189
fork_exit() at kern/kern_thread.py:96
Tracing tid 290 (lockload0.0) on cpu 0:
mi_switch() at kern/kern_synch.py:164
mtx_lock() at kern/kern_mutex.py:73
lockload_thread() at userland/lockload.py:93
fork_exit() at kern/kern_thread.py:96
Tracing tid 422 (napper) on cpu 1:
fork_exit() at kern/kern_thread.py:96
Tracing tid 330 (idle: cpu1) on cpu 1:
(no kernel frames)

db> ps
  pid  ppid  proc       cpu  state    wchan     p_flag   p_sflag                  \
p_lock td_state      td_inhibitors        comm
    3     1  proc#349     1  LOCK     -         0x4000   0x0                      \
1      TDS_INHIBITED 0xc (SWAPPED|LOCK)   <napper>
   12     0  proc#352     0  CPU0     -         0x204    0x1 (INMEM)              \
0      TDS_RUNNING   0x0                  vmdaemon

the last operations of each CPU, oldest first (operation number, op, site, thread, \
simulated time, arguments -> the value answered):
  cpu 0 (its last 1):
      4410  LOADN      vm/vm_glue.py:639  tid 306  1.511300 s  [352, ['p_vmspace']] -> [None]
  cpu 1 (its last 1):
      4409  STORE      kern/kern_proc.py:43  tid 422  1.511280 s  [349, 'p_lock', 1]

Python trace of the panicking thread (simulator frames included):
  File "/opt/smp/hw/cpu.py", line 164, in trampoline
      fn()
  File "/opt/smp/kernel/kern/kern_thread.py", line 74, in <lambda>
      lambda: fork_exit(fn)
  File "/opt/smp/kernel/kern/kern_thread.py", line 96, in fork_exit
      fn()
  File "/opt/smp/kernel/vm/vm_pageout.py", line 189, in vm_daemon
      swapout_procs(req)
  File "/opt/smp/kernel/vm/vm_glue.py", line 640, in swapout_procs
      KASSERT(vm is not None,
  File "/opt/smp/kernel/kern/kern_mutex.py", line 159, in KASSERT
      md.panic(msg)
  File "/opt/smp/kernel/machine/cpu.py", line 198, in panic
      pcpu.hw.panic(f"panic: {message}")
"""


def test_crash_txt_golden() -> None:
    from smp.observe.crash import crash_text
    assert crash_text(REPORT) == CRASH


def test_crash_txt_says_panic_once_and_names_no_simulator_frame_before_the_python_trace(
        ) -> None:
    """Issue 16: crash.txt began ``panic: panic: ...`` and its trace started in the CPU's
    trampoline."""
    from smp.observe.crash import crash_text
    text = crash_text(REPORT)
    assert text.startswith("panic: swapout_procs") and "panic: panic:" not in text
    head = text.split("Python trace")[0]
    assert "trampoline" not in head and "switch_to" not in head and "<lambda>" not in head


def test_a_lock_chain_round_a_cycle_is_a_deadlock() -> None:
    """Two threads, each holding the lock the other waits for (a server-detected deadlock
    panics with a stack of sites, not Python frames)."""
    from smp.observe.crash import crash_text
    a = _held("lockA", "excl", "sleep mutex", 0x100, "a.py:1")
    b = _held("lockB", "excl", "sleep mutex", 0x200, "b.py:2")
    r = {"panic": {"message": "deadlock: thread 1 -> lockB -> thread 2 -> lockA -> thread 1",
                   "cpu": 1, "tid": 1, "thread": "t1", "site": "a.py:3", "source": "server",
                   "stack": ["a.py:3: ACQUIRE closed a cycle of waits"]},
         "threads": [{"cpu": 1, "tid": 1, "name": "t1", "stack": [], "held": [a],
                      "waiting": dict(b, site="a.py:3")},
                     {"cpu": 2, "tid": 2, "name": "t2", "stack": [], "held": [b],
                      "waiting": dict(a, site="b.py:4")}]}
    text = crash_text(r)
    assert text.splitlines()[:5] == [
        "panic: deadlock: thread 1 -> lockB -> thread 2 -> lockA -> thread 1",
        "cpuid = 1", "KDB: stack backtrace:", "a.py:3: ACQUIRE closed a cycle of waits",
        "[ thread tid 1 (t1) on cpu 1 at a.py:3 (raised by the machine server) ]"]
    chains = text.split("db> show allchains\n")[1].split("\n\n")[0].splitlines()
    assert chains == [
        'chain 1: "lockB" (sleep mutex 0x200)',
        '  held by thread 2 (t2, cpu 2), blocked on "lockA" (sleep mutex 0x100) @ b.py:4',
        '  held by thread 1 (t1, cpu 1), blocked on "lockB" (sleep mutex 0x200) @ a.py:3',
        "  held by thread 2 (t2, cpu 2): a cycle, the chain is a deadlock",
        "  waiting: thread 1 (t1, cpu 1) @ a.py:3",
        'chain 2: "lockA" (sleep mutex 0x100)',
        '  held by thread 1 (t1, cpu 1), blocked on "lockB" (sleep mutex 0x200) @ a.py:3',
        '  held by thread 2 (t2, cpu 2), blocked on "lockA" (sleep mutex 0x100) @ b.py:4',
        "  held by thread 1 (t1, cpu 1): a cycle, the chain is a deadlock",
        "  waiting: thread 2 (t2, cpu 2) @ b.py:4"]


# -- smp witness ------------------------------------------------------------------------------
# FreeBSD 5.0 (2002) subr_witness.c, witness_display() and witness_displaydescendants():
#     prnt("Sleep locks:\n");  ...  prnt("\nSpin locks:\n");  ...
#     prnt("\nLocks which were never acquired:\n");
#     prnt("%-2d", level);  for (i = 0; i < level; i++) prnt(" ");
#     prnt("%s", parent->w_name);
#     prnt(" -- last acquired @ %s:%d\n", parent->w_file, parent->w_line);
# itismychild() keeps the tree pruned ("a lock is now both a descendant and a direct child
# of a given lock ... remove the direct child link"); later FreeBSD prints a subtree met a
# second time as " -- (already displayed)". The reversal text is WITNESS's:
#     printf("lock order reversal\n"); printf(" 1st %p %s (%s) @ %s:%d\n", ...)
def _lock(name: str, cls: str, last: str, acquires: int = 1) -> dict[str, Any]:
    return {"name": name, "class": cls, "last_acquired": last, "acquires": acquires,
            "contested": 0, "cpus_seen": [0], "max_hold_us": 1.0, "wait_us_total": 0.0}


WITNESS_REPORT: dict[str, Any] = {
    "seed": 7, "config": "/x/configs/stress.toml",
    # what the kernel registers: the class of a lock of the static order never taken
    "policy": {"lock_order": {"classes": {"callout": "spin mutex"}}},
    "witness_order": {
        "Giant": ["allproc", "proc zone", "process lock", "proctree", "sched lock",
                  "vm page queue mutex"],
        "allproc": ["process lock", "sched lock", "vm page queue mutex"],
        "proc zone": ["vm page queue mutex"], "process lock": ["sched lock"],
        "proctree": ["allproc", "process lock"],
        "sched lock": ["callout", "vm page queue free mutex"],
        "vm page queue mutex": ["vm page queue free mutex"]},
    "locks": [_lock("Giant", "sleep mutex", "kern/kern_synch.py:56"),
              _lock("allproc", "sx", "vm/vm_glue.py:590"),
              _lock("proc zone", "sleep mutex", "kern/kern_proc.py:160"),
              _lock("process lock", "sleep mutex", "kern/kern_proc.py:43"),
              _lock("proctree", "sx", "kern/kern_exit.py:120"),
              _lock("sched lock", "spin mutex", "kern/kern_synch.py:150"),
              _lock("vm page queue free mutex", "spin mutex", "vm/vm_page.py:300"),
              _lock("vm page queue mutex", "sleep mutex", "vm/vm_page.py:250"),
              _lock("user map", "lockmgr", "vm/vm_map.py:86")],
    "findings": [{"detector": "witness", "sites": [],
                  "summary": "lock order reversal: process lock -> allproc (established: "
                             "allproc -> process lock)",
                  "detail": "lock order reversal\n"
                            " 1st process lock (sleep mutex) @ kern/kern_proc.py:43\n"
                            " 2nd allproc (sx) @ vm/vm_glue.py:611\n"
                            "established order: allproc -> process lock, first seen\n"
                            " 1st allproc @ vm/vm_glue.py:590\n"
                            " 2nd process lock @ kern/kern_proc.py:43"}],
}

SHOW_WITNESS = """\
Sleep locks:
0 Giant -- last acquired @ kern/kern_synch.py:56
1  proc zone -- last acquired @ kern/kern_proc.py:160
3   vm page queue mutex -- last acquired @ vm/vm_page.py:250
1  proctree -- last acquired @ kern/kern_exit.py:120
2   allproc -- last acquired @ vm/vm_glue.py:590  <- LOR with process lock
3    process lock -- last acquired @ kern/kern_proc.py:43  <- LOR with allproc
3    vm page queue mutex -- (already displayed)

Spin locks:
0 sched lock -- last acquired @ kern/kern_synch.py:150
1  callout -- never acquired (static order)
1  vm page queue free mutex -- last acquired @ vm/vm_page.py:300

Locks which were never acquired:
callout

Lock order reversals (1):
lock order reversal
 1st process lock (sleep mutex) @ kern/kern_proc.py:43
 2nd allproc (sx) @ vm/vm_glue.py:611
established order: allproc -> process lock, first seen
 1st allproc @ vm/vm_glue.py:590
 2nd process lock @ kern/kern_proc.py:43
"""


def test_show_witness_golden() -> None:
    from smp.observe.lockgraph import lock_order, show_witness
    assert show_witness(lock_order(WITNESS_REPORT)) == SHOW_WITNESS


def test_witness_dot_draws_the_reduced_order_and_the_reversal_in_red() -> None:
    from smp.observe.lockgraph import lock_order, to_dot
    dot = to_dot(lock_order(WITNESS_REPORT), "lock order: stress.toml, seed 7")
    assert dot.startswith("digraph witness {\n") and dot.endswith("}\n")
    edges = [line.strip() for line in dot.splitlines() if "->" in line]
    assert '"Giant" -> "proctree";' in edges and '"proctree" -> "allproc";' in edges
    assert '"Giant" -> "allproc";' not in edges           # implied by Giant -> proctree
    assert '"allproc" -> "sched lock";' not in edges      # sleep -> spin: not drawn
    assert ('"process lock" -> "allproc" [color="#d62728", fontcolor="#d62728", '
            'style=dashed, label="reversal", constraint=false];') in edges
    assert 'subgraph cluster_1 {' in dot and '"callout" [tooltip="spin mutex", ' \
        'style=dashed' in dot


def test_witness_svg_and_png_come_from_graphviz_when_it_is_installed(
        tmp_path: Any) -> None:
    """A stand-in ``dot`` records how it is called and writes what it is asked for."""
    import os
    import stat
    from smp.observe.lockgraph import render_dot
    log = tmp_path / "calls"
    fake = tmp_path / "dot"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nshift 2\necho drawn > \"$2\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    src = tmp_path / "witness.dot"
    src.write_text("digraph witness {}\n")
    paths = render_dot(str(src), dot=str(fake))
    assert paths == [str(tmp_path / "witness.svg"), str(tmp_path / "witness.png")]
    assert all(os.path.exists(p) for p in paths)
    assert log.read_text().splitlines() == [f"-Tsvg {src} -o {paths[0]}",
                                            f"-Tpng {src} -o {paths[1]}"]


def test_a_threads_trace_says_who_last_woke_it() -> None:
    from smp.observe.crash import alltrace
    lines = alltrace([{"tid": 422, "name": "napper", "cpu": 1, "stack": SLEEP_STACK[:2]}],
                     {"422": {"site": "kern/kern_exit.py:103", "by": 306, "op": 4400}})
    assert lines[0] == "Tracing tid 422 (napper) on cpu 1:"
    assert lines[-1] == "(last woken @ kern/kern_exit.py:103 by thread 306, operation 4400)"
    assert alltrace([{"tid": 9, "name": "x", "cpu": 0, "stack": []}], {"9": {
        "site": "kern/kern_synch.py:131", "by": 5, "op": 8, "how": "timed out"}}) == [
        "Tracing tid 9 (x) on cpu 0:", "(no kernel frames)",
        "(last timed out @ kern/kern_synch.py:131, operation 8)"]     # nobody's doing
    # asleep now: this sleep first (its timeout, how long), then the last wakeup
    asleep = {"site": "vm/swap_pager.py:135", "s": 9.7, "timeout": 0}
    assert alltrace([{"tid": 9, "name": "x", "cpu": 0, "stack": []}], {"9": {
        "site": "kern/kern_synch.py:131", "by": 5, "op": 8, "how": "timed out",
        "asleep": asleep}})[-1] == (
        "(asleep @ vm/swap_pager.py:135 for 9.7 s, no timeout; before that, last timed out "
        "@ kern/kern_synch.py:131, operation 8)")
    assert alltrace([{"tid": 9, "name": "x", "cpu": 0, "stack": []}], {"9": {
        "asleep": dict(asleep, timeout=100)}})[-1] == (
        "(asleep @ vm/swap_pager.py:135 for 9.7 s, timeout 100 ticks)")


def test_a_held_lock_says_the_operation_it_was_taken_at() -> None:
    from smp.observe.crash import lock_line
    assert lock_line(dict(GIANT, op=4400)) == (
        "exclusive sleep mutex Giant r = 1 (0x10400) locked @ kern/kern_synch.py:56 "
        "(operation 4400)")
    assert lock_line(GIANT).endswith("locked @ kern/kern_synch.py:56")   # none known


def test_frames_that_hide_themselves_are_left_out_of_a_stack() -> None:
    """A thread's stack and a panic's leave out the frames marked ``__tracebackhide__``
    (the memory door, a struct field's access: one instruction, not a kernel frame)."""
    import sys

    from smp.hw.cpu import _visible_stack

    def inner() -> list[str]:
        return _visible_stack(sys._getframe())

    def door() -> list[str]:
        __tracebackhide__ = True  # noqa: F841 - read by the stack's walk
        return inner()

    def kernel() -> list[str]:
        return door()

    text = "\n".join(kernel())
    assert ", in kernel" in text and ", in inner" in text and ", in door" not in text
