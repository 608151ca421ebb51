"""``python -m pvae`` is the ``pvae`` command."""

import sys

from pvae.cli import main

sys.exit(main())
