"""Kernel structures and flags (FreeBSD sys/sys)."""
