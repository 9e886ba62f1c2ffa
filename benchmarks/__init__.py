"""Benchmarks of okx-loan-exporter: scrape speed, OKX call economy, scaling and start-up.

Run everything with ``python -m benchmarks`` (or a subset: ``python -m benchmarks scrape``); every
figure is printed as a table and written to ``benchmarks/results/latest.json``. The benchmarks
start real processes (the simulator, the exporter, a reference server) on 127.0.0.1 only. See
``benchmarks/README.md`` for what each figure means. Nothing here is part of the test suite.
"""
