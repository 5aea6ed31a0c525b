"""torch.distributed glue that keeps replicated banks identical on every rank.

Under DistributedDataParallel each rank sees its own slice of the global batch.
To keep a replicated memory bank identical everywhere, every rank gathers the
(index, embedding) pairs of all ranks, in rank order, and applies the same
update; duplicate ids across ranks then resolve identically (the last
occurrence, i.e. the highest rank, wins). Statistics such as CRD's Z are
averaged over the global batch with a count-weighted all-reduce.

Cost per step: all-gathers of B*(1 + 2*d) numbers per rank (plus tiny all-gathers
of batch sizes, read on the host: a synced step cannot be captured in a CUDA graph,
and torch.compile breaks the graph there); no bank traffic. Once, on the first
synced step (and after each load_state_dict), the first rank's banks and
parameters are broadcast, so ranks that initialised their banks differently agree.

Banks too large to replicate (tens of millions of rows) would instead be
sharded: each rank owns rows [r*N/W, (r+1)*N/W), queries are all-gathered
(B*W*d), each rank scores the sampled ids that fall in its shard, and the
per-row partial losses and dq contributions (B*W*(1+d)) are reduce-scattered
back. That is two collectives of O(B*W*d) per step instead of O(N*d) memory per
rank; it is not built yet.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def active(group=None, requested: bool | str = "auto") -> bool:
    """Whether to synchronise: ``requested`` True/False, or "auto" = a process
    group with more than one rank is initialised."""
    if requested is False:
        return False
    ready = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    if requested is True and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sync_banks=True needs torch.distributed to be initialised")
    return ready


def broadcast_from_first_rank_(tensors, group=None) -> None:
    """Overwrite ``tensors`` on every rank with the group's first rank's, in place: the
    banks start identical even where each rank initialised its own (ranks seeded
    differently, as DDP scripts usually do)."""
    source = 0 if group is None else dist.get_global_rank(group, 0)
    for tensor in tensors:
        dist.broadcast(tensor, src=source, group=group)


def all_gather_cat(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate ``tensor`` (first dimension may differ per rank) over ranks, in rank order."""
    world = dist.get_world_size(group)
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def weighted_mean(value: torch.Tensor, weight: float, group=None) -> torch.Tensor:
    """sum_r(value_r * weight_r) / sum_r(weight_r) over ranks."""
    packed = torch.cat([value.reshape(-1).double() * weight,
                        torch.tensor([float(weight)], dtype=torch.float64, device=value.device)])
    dist.all_reduce(packed, group=group)
    return (packed[:-1] / packed[-1]).to(value.dtype).reshape(value.shape)
