"""rdkernels microbenchmarks: every op against the reference formulations.

Run ``python -m benchmarks --quick`` (see ``python -m benchmarks --help``).
"""
