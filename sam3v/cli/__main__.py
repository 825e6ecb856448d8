"""`python -m sam3v.cli`, as the tests and containers run it."""

import sys

from sam3v.cli import main

sys.exit(main())
