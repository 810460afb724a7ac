"""What each kernel counter counts, for people: the help text of ``smp_kernel_<name>_total``
in the Prometheus metrics, and wherever a counter is explained.

The kernel counts with ``md.pcpu.count(name)`` (per CPU, summed over CPUs in report.json's
``kernel``); every counter is a number of events since boot, so the unit is the event. A
counter not listed here gets a generic text; a new counter should get a line.
"""

from __future__ import annotations

KERNEL_COUNTER_HELP: dict[str, str] = {
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
    "invariant_checks": "runs of the invariant checker (once a simulated second per CPU, "
                        "and at the end)",
    "invariant_violations": "invariant checks that failed",
    "uarea_reads": "U-areas read by the debugger programs through kernacc",
    "printf": "kernel console messages",
    "lockload_increments": "increments of a lockload object under its mutex",
    "lockload_sleeps": "lockload threads that slept on their object's channel",
    "lockload_timeouts": "lockload sleeps that ended by timeout",
    "lockload_wakeups_sent": "wakeups sent to sleeping lockload threads",
    "lockload_allproc_walks": "walks of allproc by lockload threads",
}

PREFIX_HELP = {
    "programs_": "user programs of this kind started ({rest})",
    "failpoint_": "times the switched-off race guard {rest} was crossed",
    "finding_": "kernel findings {rest} reported",
}


def kernel_counter_help(name: str) -> str:
    """``name``'s help text, with its unit (every kernel counter counts events)."""
    text = KERNEL_COUNTER_HELP.get(name)
    if text is None:
        for prefix, fmt in PREFIX_HELP.items():
            if name.startswith(prefix):
                text = fmt.format(rest=name[len(prefix):])
                break
        else:
            text = f"kernel events counted as {name!r}"
    return f"Kernel counter: {text} (events since boot, per CPU)"


__all__ = ["KERNEL_COUNTER_HELP", "kernel_counter_help"]
