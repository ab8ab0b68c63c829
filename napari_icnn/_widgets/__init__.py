"""napari widgets: thin over the core functions the command line uses."""
