"""Benchmarks that ship with the runtime (`aruntime bench ...`).

Every benchmark measures its baseline in the same run as its own figure, prints the ratio as its
last line, and can write a claim record (see `claim.py`) that carries the evidence: hardware,
versions, workload, seed and the sha256 of the raw log it printed. All four end on one path,
`report.Report`: lines and facts, the ratio last, the raw log, the claim written with its log.

Each command's module (`engine`, `cache`, `route`, `durable`) measures and holds its command
line; its workload, measured systems and figures live in modules named `<command>_*`.
"""
