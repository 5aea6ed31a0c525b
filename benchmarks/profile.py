"""Where the time of one CRD-sized bank-contrast call goes (GPU only).

    python -m benchmarks.profile [--B 64] [--K 16384] [--N 50000] [--d 128]

Runs forward + backward of ``bank_contrast`` (nce epilogue) for each backend and
strategy under torch.profiler and prints the top operators by self CPU and
self CUDA time, so launch and host overheads show next to the kernels.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from rdkernels.ops import bank_contrast


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    for name, default in (("B", 64), ("K", 16384), ("N", 50000), ("d", 128)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--iters", type=int, default=20)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.profile needs a CUDA device")
    dev = torch.device("cuda", torch.cuda.current_device())
    print(_header(dev, args))
    q = torch.nn.functional.normalize(torch.randn(args.B, args.d, device=dev), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(args.N, args.d, device=dev), dim=1)
    idx = torch.randint(0, args.N, (args.B, args.K + 1), device=dev)
    z = torch.tensor([2.2 * args.N], device=dev)
    for backend in ("torch", "triton", "cuda"):
        for strategy in ("gather", "dense"):
            def step():
                qq = q.clone().requires_grad_()
                bank_contrast(qq, bank, idx, temperature=0.07, epilogue="nce", z=z, n_data=args.N,
                              backend=backend, strategy=strategy, check_indices=False).backward()
            try:
                for _ in range(3):
                    step()
            except Exception as exc:  # a backend this build lacks
                print(f"{backend}:{strategy}: {exc}")
                continue
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                step()
            end.record()
            torch.cuda.synchronize()
            print(f"\n=== {backend}:{strategy}: {start.elapsed_time(end) / args.iters:.3f} ms per fwd+bwd")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            table = prof.key_averages()
            print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
            print(table.table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=60))


def _header(dev: torch.device, args: argparse.Namespace) -> str:
    """What the tables were measured on: the output is saved as a bare text file."""
    from benchmarks.report import versions

    v = versions()
    return (f"{torch.cuda.get_device_name(dev)}, torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, "
            f"CUDA extension {'built' if v['rdkernels_cuda_extension'] else 'missing'}, commit {v['git_commit']}; "
            f"B={args.B} K={args.K} N={args.N} d={args.d}, {args.iters} timed calls")


if __name__ == "__main__":
    main()
