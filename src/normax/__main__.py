"""``python -m normax``: the same as the ``normax`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
