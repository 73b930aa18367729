"""``python -m support.xgem``: the command line of :mod:`support.xgem.cli`."""

import sys

from support.xgem.cli import main

sys.exit(main())
