"""Benchmarks: ``python -m benchmarks.bench_lock`` (or ``make bench``) prints the lock table.

A package so that the benchmark runs with ``-m`` from the project root, and so that its
worker processes can import it by name.
"""
