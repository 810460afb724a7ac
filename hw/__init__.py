"""The simulated machine's hardware: physical memory, the kernel MMU, the swap device, the
clock, the bus (the wire protocol and the CPU's side of it) and the CPU run loop.

Nothing here knows the kernel or the tooling (DESIGN.md: ``hw`` is the ground floor).
Each device offers the small sys161-style protocol: construction (init), ``fetch``/``store``
style accessors, ``statistics()`` (a frozen record for monitoring), ``dumpstate()`` (text for
panics) and ``cleanup()``.
"""

if __name__ != "smp.hw":  # one module identity: smp/__init__.py says why
    raise ImportError(f"import smp.hw, not {__name__} (smp/__init__.py)", name=__name__)
