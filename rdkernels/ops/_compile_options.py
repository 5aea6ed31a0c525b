"""Compile options every Triton launch in rdkernels passes explicitly.

``enable_fp_fusion=True``: products feeding sums compile to fused multiply-adds.
Triton has always defaulted to it, but 3.9 warns (once a process, at the first
compile) when a launch leaves it unset, and announces that 3.10 turns it off by
default. The kernels were written, tuned and checked with fusion on (the
registers, spills and SASS counts in tools/aot_check.py and the tables beside
the launch candidates), so they ask for it instead of inheriting a default that
moves; tools/aot_check.py compiles with the same options. The interpreter
ignores compile options.
"""
COMPILE_OPTIONS = {"enable_fp_fusion": True}
