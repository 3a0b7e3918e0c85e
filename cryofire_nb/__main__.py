"""``python -m cryofire_nb``: the ``cryofire-nb`` command without an installed entry point
(e.g. the package on ``PYTHONPATH`` of a GPU machine's own Python)."""

import sys

from .cli import main

sys.exit(main())
