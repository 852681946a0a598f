"""The ``genbound`` command line."""
