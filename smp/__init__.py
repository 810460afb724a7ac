"""smp: a multiprocess SMP machine simulator running a port of FreeBSD's vm_glue.c.

This package is the top floor: the machine server, configuration, the launcher, and the
``smp`` command line. It uses the kernel and the hardware; neither uses it.

The names. The source tree keeps the floors side by side (``smp/``, ``kernel/``, ``hw/``,
``configs/``), but only one name goes into site-packages: the kernel is imported as
``smp.kernel``, the hardware as ``smp.hw`` and the shipped configs are the package data of
``smp.configs``, so an installed smp cannot collide with another top-level ``kernel``,
``hw`` or ``configs``. In a source tree the links ``smp/kernel``, ``smp/hw`` and
``smp/configs`` (to ``../kernel`` and so on) give the same names; setuptools follows them
when it builds the wheel. Each of the three refuses to be imported under its folder's bare
name: with a source tree on sys.path ``kernel.x`` would load as a second copy of
``smp.kernel.x``, with its own globals (``tests/test_architecture.py`` checks that no
import says ``kernel``, ``hw`` or ``configs`` alone, and keeps the floors' rules under the
new names).
"""

__version__ = "0.1.0"
