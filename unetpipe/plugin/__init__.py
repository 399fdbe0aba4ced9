"""The napari plugin: reader, widgets and sample data (manifest: ``unetpipe/napari.yaml``)."""
