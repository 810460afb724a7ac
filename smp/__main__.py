"""``python -m smp``: the same command line as the ``smp`` script."""

import sys

try:
    from smp.cli import main
except KeyboardInterrupt:        # Ctrl-C while smp itself is being imported
    sys.exit(130)

sys.exit(main())
