"""``python -m clapray.sweep``: see :mod:`clapray.sweep.cli`."""

import sys

from clapray.sweep.cli import main

sys.exit(main())
