"""Prefect flows that wire the steps together, and the `custintel` command line."""
