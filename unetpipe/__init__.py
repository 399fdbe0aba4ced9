"""unetpipe: instance segmentation of cells and nuclei with a U-Net, as a batch pipeline.

Importing the package is cheap; the heavy libraries (torch, dask, napari) are
imported by the functions that need them.
"""

__version__ = "0.1.0"
