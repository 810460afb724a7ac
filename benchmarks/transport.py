"""``python benchmarks/transport.py [--ops N] [--rounds R] [--json]``: what a request to the
machine server costs, as ratios against baselines of the same run.

The measurement lives in the package (``smp/hunt/transport.py``, whose docstring explains
it) so that ``smp bench`` works from an installed smp too; this script runs it from a
source tree.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:                      # run as a script from anywhere in the tree
    sys.path.insert(0, _ROOT)

from smp.hunt.transport import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
