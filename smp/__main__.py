# PYTHON_ARGCOMPLETE_OK  (the `smp` script's module: argcomplete's global completion looks here)
"""``python -m smp`` and the ``smp`` script (pyproject: ``smp.__main__:entry``): the
command line of ``smp.cli``, with a Ctrl-C while smp itself is still being imported
ending quietly (exit 130) as one in any command does."""

import sys


def entry() -> int:
    try:
        from smp.cli import main
    except KeyboardInterrupt:        # Ctrl-C while smp itself is being imported
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(entry())
