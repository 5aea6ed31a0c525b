"""RRD (FIFO queue) as the public reference code computes it: the [B, N] student
and teacher logits against the queue, softmax(out_t.detach() / tau_t) times
log_softmax(out_s / tau_s), summed over the queue and averaged over the batch.

Same constructor and state_dict keys as :class:`rdkernels.RRDLoss` (``queue``,
``ptr``; the reference's ``memory.`` prefix and ``queue_ptr`` load too). One
departure: the enqueue accepts any batch size (the reference asserts
queue_size % B == 0), with the same FIFO semantics as the fused loss, so the two
can be compared step by step. Works in float64 (``.double()``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdkernels.ops.fifo_enqueue.reference import fifo_enqueue_reference_


class RRDLoss(nn.Module):
    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, queue_size: int = 16384,
                 tau_s: float = 0.02, tau_t: float = 0.1, enqueue: str = "before",
                 train_teacher_proj: bool = False):
        super().__init__()
        if enqueue not in ("before", "after"):
            raise ValueError(f"enqueue must be 'before' or 'after', got {enqueue!r}")
        self.tau_s, self.tau_t = float(tau_s), float(tau_t)
        self.enqueue = enqueue
        self.train_teacher_proj = bool(train_teacher_proj)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, feat_dim), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_load_state_dict_pre_hook(load_reference_keys)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s = F.normalize(self.embed_s(f_s.reshape(f_s.shape[0], -1)), dim=1)
        f_t = F.normalize(self.embed_t(f_t.reshape(f_t.shape[0], -1)), dim=1)
        if self.enqueue == "before":
            fifo_enqueue_reference_(self.queue, self.ptr, f_t)
        out_s = torch.einsum("nc,kc->nk", f_s, self.queue.clone().detach())
        out_t = torch.einsum("nc,kc->nk", f_t, self.queue.clone().detach())
        if not self.train_teacher_proj:
            out_t = out_t.detach()
        loss = -torch.sum(F.softmax(out_t / self.tau_t, dim=1) * F.log_softmax(out_s / self.tau_s, dim=1),
                          dim=1).mean()
        if self.enqueue == "after":
            fifo_enqueue_reference_(self.queue, self.ptr, f_t)
        return loss


def load_reference_keys(module, state_dict, prefix, *args) -> None:
    """A load_state_dict pre-hook that renames the public code's keys: ``memory.X`` -> ``X``,
    ``queue_ptr`` -> ``ptr`` (shared with :class:`rdkernels.RRDLoss`)."""
    for key in [k for k in state_dict if k.startswith(prefix + "memory.")]:
        new = prefix + key[len(prefix + "memory."):]
        if new not in state_dict:
            state_dict[new] = state_dict.pop(key)
    if prefix + "queue_ptr" in state_dict and prefix + "ptr" not in state_dict:
        state_dict[prefix + "ptr"] = state_dict.pop(prefix + "queue_ptr").reshape(1).long()


class RRDMomentumLoss(nn.Module):
    """The public code's ``memory_type="momentum"`` RRD: CRD's ContrastMemory
    (index_select gather, bmm, exp, one-time Z, index_copy_ update), then the
    relational loss on the exponentiated scores. Same constructor and keys as
    :class:`rdkernels.losses.RRDMomentumLoss`; ``contrast_idx`` is required here."""

    def __init__(self, s_dim: int, t_dim: int, n_data: int, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, tau_s: float = 0.02, tau_t: float = 0.1):
        super().__init__()
        import math

        self.n_data = int(n_data)
        self.tau_s, self.tau_t = float(tau_s), float(tau_t)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.memory_s = nn.Module()
        self.memory_t = nn.Module()
        self.memory_s.register_buffer("memory", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.memory_t.register_buffer("memory", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("params", torch.tensor([float(nce_k), float(nce_t), -1.0, -1.0, float(nce_m)]))

    def forward(self, f_s, f_t, idx, contrast_idx):
        v1 = F.normalize(self.embed_s(f_s.reshape(f_s.shape[0], -1)), dim=1)
        v2 = F.normalize(self.embed_t(f_t.reshape(f_t.shape[0], -1)), dim=1)
        batch, cols = contrast_idx.shape
        temperature, momentum = self.params[1].item(), self.params[4].item()
        mem_v1, mem_v2 = self.memory_s.memory, self.memory_t.memory
        w1 = torch.index_select(mem_v1, 0, contrast_idx.reshape(-1)).detach().view(batch, cols, -1)
        out_v2 = torch.exp(torch.bmm(w1, v2.view(batch, -1, 1)) / temperature)
        w2 = torch.index_select(mem_v2, 0, contrast_idx.reshape(-1)).detach().view(batch, cols, -1)
        out_v1 = torch.exp(torch.bmm(w2, v1.view(batch, -1, 1)) / temperature)
        if self.params[2].item() < 0:
            self.params[2] = out_v1.mean() * self.n_data
        if self.params[3].item() < 0:
            self.params[3] = out_v2.mean() * self.n_data
        out_s = (out_v1 / self.params[2].item()).squeeze(-1)
        out_t = (out_v2 / self.params[3].item()).squeeze(-1)
        with torch.no_grad():
            for mem, v in ((mem_v1, v1), (mem_v2, v2)):
                pos = torch.index_select(mem, 0, idx.view(-1)) * momentum + v * (1 - momentum)
                mem.index_copy_(0, idx, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))
        return -torch.sum(F.softmax(out_t.detach() / self.tau_t, dim=1) * F.log_softmax(out_s / self.tau_s, dim=1),
                          dim=1).mean()
