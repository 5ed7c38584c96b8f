"""`python -m leampoll` is the `leampoll` command."""

import sys

from leampoll.cli import main

sys.exit(main())
