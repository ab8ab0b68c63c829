"""``python -m napari_icnn``: the ``icnn`` command line."""

import sys

from napari_icnn.cli import main

sys.exit(main())
