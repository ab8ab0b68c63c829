import sys

from napari_icnn.cli import main

sys.exit(main())
