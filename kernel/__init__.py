"""The simulated machine's kernel: a port of FreeBSD 5.0-era code around ``sys/vm/vm_glue.c``.

The tree mirrors FreeBSD's ``sys/`` so that a reader can hold the C beside the Python:
``kern/`` (mutexes, sx, sleep and wakeup, the clock, scheduling, boot), ``vm/`` (vm_glue and
what it needs), ``sys/`` (struct definitions and flags), ``machine/`` (the one
machine-dependent layer through which the kernel reaches the hardware in ``hw/``) and
``userland/`` (the synthetic programs that drive a run, kept apart from the port).

Departures from FreeBSD are tagged ``# PORT:`` with the reason, everywhere the same way.
"""

if __name__ != "smp.kernel":  # one module identity: smp/__init__.py says why
    raise ImportError(f"import smp.kernel, not {__name__} (smp/__init__.py)", name=__name__)
