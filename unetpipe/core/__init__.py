"""The ground floor: errors, config, progress, memory, devices, the results layout, boxes and Dask schedulers."""
