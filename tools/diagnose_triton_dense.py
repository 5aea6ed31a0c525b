"""Pin down the Triton dense kernel's GPU gradient error (bank_contrast/__init__.py,
_TRITON_DENSE_SUSPECT_ON_GPU) by changing one launch parameter at a time.

On an H100 the kernel's query gradient was 3e-3..5e-3 off (max relative) at
B = 64, N = 50 000 with K = 4096 and 16 384, and right at K = 1024 and at
ImageNet's N: the error needs a program that walks many bank tiles *and* rows
with more than ENTRY_CHUNK entries in one tile. This runs the benchmark shape
under variants of the launch (pipelining stages, entries per counting step,
tiles per program) and prints each one's error against float64, so one GPU
run says which part of the kernel to look at.

    python tools/diagnose_triton_dense.py [--k 4096] [--n 50000]
"""
from __future__ import annotations

import argparse
import importlib
import warnings

import torch

VARIANTS = {
    "as shipped": {},
    "num_stages=1": dict(num_stages=1),
    "ENTRY_CHUNK=4": dict(ENTRY_CHUNK=4),
    "ENTRY_CHUNK=16": dict(ENTRY_CHUNK=16),
    "ENTRY_CHUNK=32": dict(ENTRY_CHUNK=32),
    "num_warps=8": dict(num_warps=8),
    "one tile a program": "one",     # splits = tiles: the tile loop runs once
    "all tiles in one program": "all",  # one split: the tile loop runs over the whole bank
}


def _inputs(batch, k, n, dim, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    unit = lambda rows: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(rows, dim, device=device, generator=gen), dim=1)
    idx = torch.randint(0, n, (batch, k + 1), device=device, generator=gen)
    return unit(batch), unit(n), idx


def _max_rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def main(argv: list[str] | None = None) -> dict:
    """Prints the table; returns {(variant, epilogue): (loss err, grad err) or None if it failed}."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=128)
    args = p.parse_args(argv)
    # CPU tensors run under Triton's interpreter (a smoke test of this script: it matches there)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "the CPU (Triton's interpreter)"
    results = {}
    from rdkernels.ops.bank_contrast import bank_contrast, bank_contrast_reference, estimate_nce_z
    td = importlib.import_module("rdkernels.ops.bank_contrast.triton_dense")
    query, bank, idx = _inputs(args.batch, args.k, args.n, args.dim, device)
    temperature = 0.07
    shipped_config, shipped_splits = td.launch_config, td.dense_splits
    print(f"B={args.batch} K={args.k} N={args.n} d={args.dim} on {name}; "
          f"shipped launch: {shipped_config(args.dim)}; entries a row per 32-row tile ~{args.k * 32 / args.n:.2f}")
    print(f"{'variant':<26} {'epilogue':<8} {'loss err':>10} {'grad err':>10}")
    for epilogue in ("nce", "softmax"):
        z = (estimate_nce_z(query, bank, idx, temperature=temperature, n_data=args.n, backend="torch")
             if epilogue == "nce" else None)
        q64 = query.double().requires_grad_()
        ref = bank_contrast_reference(q64, bank.double(), idx, temperature=temperature, epilogue=epilogue,
                                      z=None if z is None else z.double(), n_data=args.n, reduction="none")
        weights = torch.rand(ref.shape, dtype=torch.float64, device=device) + 0.5
        (ref * weights).sum().backward()
        for variant, change in VARIANTS.items():
            td.launch_config, td.dense_splits = shipped_config, shipped_splits
            if change == "one":
                td.dense_splits = lambda m_blocks, n_tiles, device: (n_tiles, 1)
            elif change == "all":
                td.dense_splits = lambda m_blocks, n_tiles, device: (1, n_tiles)
            elif change:
                td.launch_config = lambda dim, change=change: {**shipped_config(dim), **change}
            q = query.clone().requires_grad_()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)   # the explicit-dense warning
                    out = bank_contrast(q, bank, idx, temperature=temperature, epilogue=epilogue, z=z,
                                        n_data=args.n, reduction="none", backend="triton", strategy="dense")
                (out * weights.float()).sum().backward()
                errs = results[variant, epilogue] = (_max_rel(out, ref), _max_rel(q.grad, q64.grad))
                print(f"{variant:<26} {epilogue:<8} {errs[0]:10.2e} {errs[1]:10.2e}")
            except Exception as exc:  # a variant the compiler rejects (registers, shared memory)
                results[variant, epilogue] = None
                print(f"{variant:<26} {epilogue:<8} {'failed: ' + type(exc).__name__ + ': ' + str(exc)[:80]}")
    td.launch_config, td.dense_splits = shipped_config, shipped_splits
    return results


if __name__ == "__main__":
    main()
