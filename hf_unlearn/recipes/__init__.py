"""Runnable recipes: parse a YAML preset plus command-line overrides, unlearn, evaluate, save.

`recipes/*.py` at the repository root are thin `accelerate launch` wrappers around these; the `hf-unlearn` CLI and
`benchmarks/compare_methods.py` call them in-process.
"""
