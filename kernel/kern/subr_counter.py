"""The kernel's event counters, after FreeBSD's ``kern/subr_counter.c`` and the descriptions
``SYSCTL_*`` declarations carry: what each counter counts, in words, and which of them say
what a run did (its work).

The kernel counts with ``md.pcpu.count(name)``, per CPU; the machine sums them over the
CPUs (report.json's ``kernel``). Every counter is a number of events since boot. At boot
the kernel registers the list and the descriptions (``counters``), so that the reports,
the summary and the Prometheus exporter can name and explain them without knowing the
kernel. A new counter should get a line here.
"""

from __future__ import annotations

from smp.kernel.machine import cpu as md

# The kernel's work, as a run's report lists it first (zero when nothing happened).
SUMMARY_COUNTERS = ("forks", "forks_rfmem", "exits", "waits", "swapouts", "swapins",
                    "faultins_swapper", "faultins_phold", "swapin_waits", "vm_waits",
                    "pages_swapped_out", "pages_swapped_in", "checksum_errors", "kernacc",
                    "useracc", "vslock", "invariant_violations")

COUNTER_HELP: dict[str, str] = {
    "forks": "processes created by fork1() (with RFPROC)",
    "forks_rfmem": "forks whose child shares the parent's vmspace (RFMEM)",
    "rforks_noproc": "rfork() calls without RFPROC (only the caller's resources changed)",
    "exits": "processes that called exit1()",
    "waits": "zombies reaped by wait() (process structures freed)",
    "swapouts": "processes swapped out whole by swapout() (U-area and kernel stacks)",
    "swapins": "processes swapped in whole (vm_proc_swapin: U-area and kernel stacks)",
    "faultins_swapper": "faultin() calls by the swapper (proc0's scheduler)",
    "faultins_phold": "faultin() calls by PHOLD of a process not in memory",
    "swapin_waits": "faultin() callers that waited for another swap-in of the same process "
                    "(PS_SWAPPINGIN)",
    "swapout_procs_calls": "runs of swapout_procs() by the vm daemon",
    "vm_waits": "VM_WAIT sleeps for free memory",
    "pages_swapped_out": "pages written to the swap device",
    "pages_swapped_in": "pages read back from the swap device (page faults, U-areas and "
                        "kernel stacks)",
    "pageins": "page faults served from swap",
    "zero_fills": "page faults served by a zero-filled page",
    "uarea_pageins": "U-area pages read from swap by vm_proc_swapin",
    "kstack_pageins": "kernel stack pages read from swap by pmap_swapin_thread",
    "user_faults_failed": "user page faults that vm_fault could not resolve",
    "pageout_scans": "scans of the paging queues by the pageout daemon",
    "pages_freed_by_pageout": "pages the pageout daemon freed (written to swap first if "
                              "dirty)",
    "swap_full": "page-outs refused because the swap device was full",
    "checksum_errors": "pages read from swap whose checksum differed from the one written",
    "kernacc": "kernacc() calls (kernel address range checks)",
    "useracc": "useracc() calls (user address range checks)",
    "vslock": "vslock() calls (user pages wired for I/O)",
    "physio": "simulated raw I/O transfers (vslock, transfer, vsunlock)",
    "phold_calls": "PHOLD() calls (a process held in memory)",
    "msleeps": "msleep()/tsleep() calls (a thread went to sleep on a channel)",
    "wakeups": "wakeup() calls",
    "schedcpu_runs": "runs of schedcpu (once a simulated second)",
    "procs_recycled": "process structures reused from the proc zone's free list",
    "procs_disposed": "process structures destroyed (their U-area freed)",
    "vmspaces_allocated": "vmspaces created",
    "vmspaces_freed": "vmspaces destroyed",
    "vm_objects_allocated": "VM objects created",
    "vm_objects_freed": "VM objects destroyed",
    "invariant_checks": "runs of the machine's invariant checks (cpu 0's checker thread, "
                        "a second of simulated sleep between two, and at the end)",
    "invariant_violations": "invariant checks that failed",
    "uarea_reads": "U-areas read by the debugger programs through kernacc",
    "printf": "kernel console messages",
    "lockload_increments": "increments of a lockload object under its mutex",
    "lockload_sleeps": "lockload threads that slept on their object's channel",
    "lockload_timeouts": "lockload sleeps that ended by timeout",
    "lockload_wakeups_sent": "wakeups sent to sleeping lockload threads",
    "lockload_allproc_walks": "walks of allproc by lockload threads",
}

# counters named with a prefix and what follows it
PREFIX_HELP = {
    "programs_": "user programs of this kind started ({rest})",
    "failpoint_": "times the switched-off race guard {rest} was crossed",
    "finding_": "kernel findings {rest} reported",
}


def counters_register() -> None:
    """BSP, at boot: the work counters in report order, and every counter's description."""
    md.register("counters", {"summary": list(SUMMARY_COUNTERS), "help": COUNTER_HELP,
                             "prefix_help": PREFIX_HELP})
