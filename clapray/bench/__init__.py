"""Benchmarks: ``python -m clapray.bench <subcommand>`` (see :mod:`clapray.bench.__main__`)."""
