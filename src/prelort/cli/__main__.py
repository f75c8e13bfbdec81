"""``python -m prelort.cli``: the ``prelort`` command."""

import sys

from prelort.cli import main

sys.exit(main())
