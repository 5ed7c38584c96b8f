"""``python -m testing.vm ...``: see testing.vm.cli."""

import sys

from testing.vm.cli import main

sys.exit(main())
