"""One module per benchmark: ``python -m benchmarks.NAME [--quick]`` prints a table, then one JSON line."""
