"""``python -m normax.bench``: the same as ``normax bench``."""

import sys

from . import main

sys.exit(main())
