"""The report's figures and tables, and ``unetpipe info``."""
