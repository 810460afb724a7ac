"""The virtual memory system (FreeBSD sys/vm)."""
