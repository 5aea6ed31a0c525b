"""bank_contrast: score queries against sampled memory-bank rows, with a loss epilogue.

For query q[B, d], bank M[N, d] and idx[B, K+1] (column 0 the positive), the
scores are s[b, k] = <M[idx[b, k]], q[b]> / T. Epilogues:

* ``"softmax"``: InfoNCE, cross-entropy with the positive at column 0;
* ``"nce"``: CRD's NCE loss (RepDistiller's ContrastLoss) on x = exp(s) / Z;
* ``"scores"``: s itself, differentiable through the query.

The gathered [B, K+1, d] rows are never materialised by the fast paths, and the
gradient flows to the query only (the bank is a buffer). For the loss
epilogues the gradient is computed in the forward pass: CRD updates the bank
between forward and backward, so a backward that re-read the bank would see
the new positive rows. The ``scores`` backward does re-read the bank; if the
bank was changed in place in between, autograd raises instead of returning a
wrong gradient.
"""
from __future__ import annotations

import math

import torch

from rdkernels import backend as _backend
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels._validation import (BANK_DTYPES, FLOAT_DTYPES, INDEX_DTYPES, check_dim, check_index_range,
                                   check_index_ranges, check_positive, check_positive_int, check_tensor)
from rdkernels.ops._graph_replay import assume_graph_replay
from rdkernels.ops._graph_replay import capturing as _capturing
from rdkernels.ops.bank_contrast.cost_model import choose_strategy
from rdkernels.ops.bank_contrast.dense import (bank_contrast_loss_dense_torch, bank_scores_backward_dense_torch,
                                               bank_scores_dense_torch)
from rdkernels.ops.bank_contrast.reference import (bank_contrast_loss_torch, bank_contrast_reference,
                                                   bank_scores_backward_torch, bank_scores_torch, reduce_rows)

__all__ = ["assume_graph_replay", "bank_contrast", "estimate_nce_z", "bank_contrast_reference"]

EPILOGUES = ("nce", "softmax", "scores")
REDUCTIONS = ("mean", "sum", "none")
STRATEGIES = ("auto", "gather", "dense")
_CUDA_OP = "bank_contrast"
MAX_FUSED_DIM = 1024  # widest query the Triton and CUDA gather kernels take (one register tile per row)


# --------------------------------------------------------------------------- ops

@op_body
def _loss_impl(query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, z: torch.Tensor | None,
               temperature: float, epilogue: str, n_data: int, backend: str, check_indices: bool,
               strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    if check_indices:  # Z rides on the index check's host sync: a Z <= 0, NaN or inf gives a wrong loss
        check_index_ranges({"idx": idx}, bank.shape[0], positive={"z": z})
    if strategy == "dense":
        if backend == "cuda":
            from rdkernels.ops.bank_contrast.cuda import bank_contrast_loss_dense_cuda as impl
        elif backend == "triton":
            from rdkernels.ops.bank_contrast.triton_dense import bank_contrast_loss_dense_triton as impl
        else:
            impl = bank_contrast_loss_dense_torch
        return impl(query, bank, idx, z, temperature, epilogue, n_data)
    if backend == "cuda":
        from rdkernels.ops.bank_contrast.cuda import bank_contrast_loss_cuda as impl
    elif backend == "triton":
        from rdkernels.ops.bank_contrast.triton import bank_contrast_loss_triton as impl
    else:
        impl = bank_contrast_loss_torch
    return impl(query, bank, idx, z, temperature, epilogue, n_data)


_loss_op = torch.library.custom_op("rdkernels::bank_contrast_loss", _loss_impl, mutates_args=())


@_loss_op.register_fake
def _(query, bank, idx, z, temperature, epilogue, n_data, backend, check_indices, strategy):
    batch, dim = query.shape
    return query.new_empty(batch, dtype=torch.float32), query.new_empty(batch, dim, dtype=torch.float32)


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.query_dtype = inputs[0].dtype


def _loss_backward(ctx, grad_rows, grad_dq):
    (dq,) = ctx.saved_tensors
    grad_query = (grad_rows[:, None] * dq).to(ctx.query_dtype)
    return grad_query, None, None, None, None, None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)
_loss = eager_or_compiled(_loss_op, _loss_impl, _loss_setup, _loss_backward)


@op_body
def _scores_impl(query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, temperature: float,
               backend: str, check_indices: bool, strategy: str) -> torch.Tensor:
    if check_indices:
        check_index_range("idx", idx, bank.shape[0])
    if strategy == "dense":  # every backend: one GEMM (cuBLAS on a GPU) + a gather of scalar scores
        return bank_scores_dense_torch(query, bank, idx, temperature)
    if backend == "cuda":
        from rdkernels.ops.bank_contrast.cuda import bank_scores_cuda
        return bank_scores_cuda(query, bank, idx, temperature)
    if backend == "triton":
        from rdkernels.ops.bank_contrast.triton import bank_scores_triton
        return bank_scores_triton(query, bank, idx, temperature)
    return bank_scores_torch(query, bank, idx, temperature)


_scores_op = torch.library.custom_op("rdkernels::bank_scores", _scores_impl, mutates_args=())


@_scores_op.register_fake
def _(query, bank, idx, temperature, backend, check_indices, strategy):
    return query.new_empty(idx.shape, dtype=torch.float32)


@op_body
def _scores_backward_impl(grad_scores: torch.Tensor, query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor,
                        temperature: float, backend: str, strategy: str) -> torch.Tensor:
    if strategy == "dense":  # score gradients summed over the sampled rows (dense.py)
        return bank_scores_backward_dense_torch(grad_scores, bank, idx, temperature)
    if backend == "cuda":
        from rdkernels.ops.bank_contrast.cuda import bank_scores_backward_cuda
        return bank_scores_backward_cuda(grad_scores, query, bank, idx, temperature)
    if backend == "triton":
        from rdkernels.ops.bank_contrast.triton import bank_scores_backward_triton
        return bank_scores_backward_triton(grad_scores, query, bank, idx, temperature)
    return bank_scores_backward_torch(grad_scores, bank, idx, temperature)


_scores_backward_op = torch.library.custom_op("rdkernels::bank_scores_backward", _scores_backward_impl,
                                              mutates_args=())
scores_query_grad = eager_or_compiled(_scores_backward_op, _scores_backward_impl)


@_scores_backward_op.register_fake
def _(grad_scores, query, bank, idx, temperature, backend, strategy):
    return query.new_empty(query.shape, dtype=torch.float32)


def _scores_setup(ctx, inputs, output):
    query, bank, idx, temperature, backend, _, strategy = inputs
    ctx.save_for_backward(query, bank, idx)  # the version check guards against bank updates
    ctx.temperature, ctx.backend, ctx.strategy = temperature, backend, strategy


def _scores_backward(ctx, grad_scores):
    query, bank, idx = ctx.saved_tensors
    # The custom op, not the eager shortcut: AOT autograd traces this backward
    # with fake tensors, outside dynamo, where is_compiling() is False.
    grad = _scores_backward_op(grad_scores.contiguous(), query, bank, idx, ctx.temperature, ctx.backend,
                               ctx.strategy)
    return grad.to(query.dtype), None, None, None, None, None, None


_scores_op.register_autograd(_scores_backward, setup_context=_scores_setup)
_scores = eager_or_compiled(_scores_op, _scores_impl, _scores_setup, _scores_backward)


# --------------------------------------------------------------- public entry

def _validate(query, bank, idx, temperature, epilogue, z, n_data, reduction, strategy) -> tuple[float, int]:
    """All checks, before anything runs; returns (temperature, n_data) as Python
    numbers (n_data is 1 where the epilogue does not read it)."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    check_tensor("query", query, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("bank", bank, ndim=2, dtypes=BANK_DTYPES, device=query.device)
    check_tensor("idx", idx, ndim=2, dtypes=INDEX_DTYPES, device=query.device, contiguous=False)
    check_dim("query", query, 1, bank.shape[1], "the bank's row width")   # the bank is the state: name the query
    check_dim("idx", idx, 0, query.shape[0], "query's batch size")
    if bank.requires_grad and torch.is_grad_enabled():
        # The reference would differentiate the bank; the fused ops never do, and
        # would leave bank.grad silently None.
        raise ValueError("bank requires grad, but bank_contrast never differentiates the bank (it is a buffer): "
                         "pass bank.detach()")
    temperature = check_positive("temperature", temperature)
    if epilogue != "nce":
        return temperature, 1
    if idx.shape[1] < 2:
        raise ValueError("idx must have at least 2 columns (the positive and one negative) for the nce epilogue")
    if z is None:
        raise ValueError("z is required for the nce epilogue (see rdkernels.ops.estimate_nce_z)")
    check_tensor("z", z, dtypes=(torch.float32,), device=query.device, contiguous=False)
    if z.numel() != 1:
        raise ValueError(f"z must hold one value, got shape {tuple(z.shape)}")
    if n_data is None:
        raise ValueError("n_data is required for the nce epilogue: the dataset size, whose uniform noise "
                         "distribution Pn = 1 / n_data the NCE terms use")
    return temperature, check_positive_int("n_data", n_data)


def _resolve(query, backend, op="bank_contrast"):
    """The backend that runs this call; under ``auto`` a width the fused kernels cannot
    take moves to torch, an explicit request raises instead (as the other ops do).
    ``op``: the public op the messages name."""
    name = _backend.resolve(query.device, _CUDA_OP, backend, public_name=op)
    if name != "torch" and query.shape[1] > MAX_FUSED_DIM:
        if _backend.requested_backend(backend) != "auto":
            raise _backend.BackendUnavailable(
                f"backend {name!r} cannot run {op}: query has {query.shape[1]} columns, its kernels take "
                f"up to {MAX_FUSED_DIM} (use backend='torch' or 'auto')")
        name = "torch"
    return name


def _choose(strategy, query, bank, idx, backend_name):
    """The concrete strategy for this call (see cost_model.py for ``"auto"``)."""
    if strategy != "auto":
        return strategy
    return choose_strategy(query.shape[0], idx.shape[1], bank.shape[0], query.shape[1], bank.dtype,
                           query.device, backend_name, captured=_capturing(query))


def bank_contrast(query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, *, temperature: float,
                  epilogue: str = "softmax", z: torch.Tensor | None = None, n_data: int | None = None,
                  reduction: str = "mean", backend: str | None = None, strategy: str = "auto",
                  check_indices: bool = True) -> torch.Tensor:
    """Contrast ``query`` against bank rows ``bank[idx]`` (column 0 the positive).

    Args:
        query: [B, d] float32/bfloat16/float16; receives the gradient. Any
            strides (a non-contiguous query or idx is copied first).
        bank: [N, d] float32/bfloat16, contiguous, a buffer: never differentiated,
            so it must not require grad while grad mode is on (pass ``bank.detach()``).
        idx: [B, K+1] int32/int64 row ids into ``bank``.
        temperature: T in s = <M[idx], q> / T.
        epilogue: ``"softmax"`` (InfoNCE), ``"nce"`` (CRD) or ``"scores"``.
        z: the NCE normaliser Z, a one-element float32 tensor on the device;
            positive and finite. The op reads no device value without a sync,
            so Z is checked only with the index check (``check_indices``); a
            Z <= 0, NaN or inf that gets past it gives a NaN or wrong loss.
        n_data: dataset size; Pn = 1 / n_data in the NCE loss.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch (loss epilogues).
        backend: override the global backend choice for this call.
        strategy: ``"gather"`` (stream the sampled rows), ``"dense"`` (score the
            whole bank with a matrix multiply and weight each bank row by how often
            it was sampled; reads the bank once) or ``"auto"`` (a cost model picks
            per call, see ``cost_model.py``). Both give the same result to float
            rounding.
        check_indices: range-check ``idx`` and check ``z`` (one host sync);
            pass False when the caller has checked already.
            ``RDKERNELS_CHECK_INDICES=0`` turns all such checks off.

    Returns:
        The loss (0-dim for mean/sum, [B] for none), or s[B, K+1] for ``"scores"``;
        always float32.
    """
    temperature, n_data = _validate(query, bank, idx, temperature, epilogue, z, n_data, reduction, strategy)
    query, idx = query.contiguous(), idx.contiguous()  # strided activations: a copy (the kernels read rows)
    name = _resolve(query, backend)
    strategy = _choose(strategy, query, bank, idx, name)
    if epilogue == "scores":
        return _scores(query, bank, idx, temperature, name, check_indices, strategy)
    z = None if epilogue == "softmax" else z.reshape(1)  # softmax never reads Z
    rows, _ = _loss(query, bank, idx, z, temperature, epilogue, n_data, name, check_indices, strategy)
    return reduce_rows(rows, reduction)


@torch.no_grad()
def estimate_nce_z(query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, *, temperature: float,
                   n_data: int, backend: str | None = None, strategy: str = "auto",
                   check_indices: bool = True) -> torch.Tensor:
    """CRD's normaliser: mean of exp(s) over all B*(K+1) entries, times n_data.

    The mean is taken in log space from the softmax epilogue's per-row
    logsumexp, so the sum of exp(s) cannot overflow however large the scores.
    Z itself is returned in float32: it is inf once exp(max s) * n_data passes
    about 3.4e38 (e.g. T = 0.01 with a query aligned with its bank rows, where
    s = 100); bank_contrast's nce epilogue refuses such a Z under its index
    check. Computed on the device, with no host sync beyond that check. No gradient.
    ``backend`` and ``strategy`` as for :func:`bank_contrast`, whose softmax rows it takes.
    """
    temperature, _ = _validate(query, bank, idx, temperature, "softmax", None, None, "none", strategy)
    query, idx = query.contiguous(), idx.contiguous()
    n_data = check_positive_int("n_data", n_data)
    name = _resolve(query, backend, op="estimate_nce_z")
    rows, _ = _loss(query, bank, idx, None, temperature, "softmax", 1, name, check_indices,
                    _choose(strategy, query, bank, idx, name))
    s0 = (bank[idx[:, 0].long()].float() * query.float()).sum(dim=1) / temperature
    row_lse = rows + s0
    log_mean = torch.logsumexp(row_lse, dim=0) - math.log(idx.numel())
    return (log_mean.exp() * n_data).reshape(1)
