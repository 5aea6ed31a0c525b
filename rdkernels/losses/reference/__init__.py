"""The public reference code's formulations, in plain PyTorch.

Each module here has the same constructor and state_dict keys as its fused
counterpart in rdkernels.losses, so a checkpoint moves between them. They
materialise what the fused ops avoid, and serve as the "naive" rows of the
benchmarks and ``--impl reference`` in the training harness. They never import
the fast paths.
"""
