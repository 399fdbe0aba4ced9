"""Lazy reading and atomic writing of TIFF / Zarr / OME-Zarr, and the resume markers of partial stores."""
