"""The kernel's user land: the synthetic programs and loads that drive a run.

Kept apart from the port (DESIGN.md): nothing under ``kern/`` or ``vm/`` imports this
package. Each module declares its SYSINITs when imported; importing the package brings
them all in.
"""

from smp.kernel.userland import lockload, programs  # noqa: F401
