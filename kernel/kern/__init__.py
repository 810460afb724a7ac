"""Kernel core: locks, sleep/wakeup, clock, scheduling, threads, boot (FreeBSD sys/kern)."""
