"""``python -m smp``: the same command line as the ``smp`` script."""

import sys

from smp.cli import main

sys.exit(main())
