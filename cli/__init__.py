"""The `waylay` command line."""
