"""``python -m clapray.report``: see :mod:`clapray.report.cli`."""

import sys

from clapray.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
