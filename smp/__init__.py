"""smp: a multiprocess SMP machine simulator running a port of FreeBSD's vm_glue.c.

This package is the top floor: the machine server, configuration, the launcher, and the
``smp`` command line. It uses ``kernel`` and ``hw``; neither uses it.
"""

__version__ = "0.1.0"
