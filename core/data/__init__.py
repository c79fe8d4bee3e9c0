"""Data: sources, scene geometry, recipes, the compositor, file formats, readers of every layout, datasets and
the device-side data path. ``generate/`` beneath it writes datasets (``lab data generate``)."""
