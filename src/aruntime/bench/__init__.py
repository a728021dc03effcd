"""Benchmarks that ship with the runtime (`aruntime bench ...`).

Every benchmark measures its baseline in the same run as its own figure, prints the ratio as its
last line, and can write a claim record (see `claim.py`) that carries the evidence: hardware,
versions, workload, seed and the sha256 of the raw log it printed.
"""
