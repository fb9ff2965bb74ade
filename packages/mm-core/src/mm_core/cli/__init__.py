"""The `mm-run` command."""
