"""Constants of ``sys/param.h``, ``sys/priority.h`` and ``sys/errno.h`` that the port uses.

Machine sizes and system maximums are not here: they live in ``kernel/param.py``.
"""

from __future__ import annotations

# sys/priority.h: lower is better
PRI_MIN_ITHD = 0
PSWP = 64                  # kernel sleep priorities, from best to worst
PVM = 68
PINOD = 72
PRIBIO = 76
PVFS = 80
PZERO = 84
PSOCK = 88
PWAIT = 92
PCONFIG = 96
PLOCK = 100
PPAUSE = 104
PRI_MIN_REALTIME = 128
PRI_MIN_TIMESHARE = 160
PUSER = PRI_MIN_TIMESHARE
PRI_MAX_TIMESHARE = 223
PRI_MIN_IDLE = 224
PRI_MAX = 255

# sys/param.h
PRIMASK = 0x0ff
PCATCH = 0x100             # OR'd with pri for tsleep to check signals
PDROP = 0x200              # OR'd with pri to stop re-entry of interlock mutex

# sys/errno.h
EPERM = 1
ENOENT = 2
ESRCH = 3
EINTR = 4
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EINVAL = 22
EAGAIN = 35
EWOULDBLOCK = EAGAIN
ECHILD = 10

INT_MIN = -(1 << 31)
INT_MAX = (1 << 31) - 1
