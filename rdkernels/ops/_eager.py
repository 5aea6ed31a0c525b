"""Eager calls of the ops skip torch.library's dispatcher.

Every op is registered as a ``torch.library.custom_op``: that is what
torch.compile traces (an opaque node with a fake implementation) and what
``torch.library.opcheck`` tests. In eager mode, though, a custom-op call costs
about 70 us of host time on a desktop CPU (torch 2.13), several times a
``torch.autograd.Function`` around the same body (about 15 us), and these ops
are host-bound at training sizes: their kernels run in 0.1-0.3 ms.

:func:`eager_or_compiled` returns a callable that, outside torch.compile,
runs the op's own body through an autograd.Function built from the op's own
``setup_context`` and ``backward``, or calls the body directly when no
gradient is needed; under torch.compile, or any other trace (fake tensors, a
dispatch mode), it calls the custom op. One body, one
backward: the two paths cannot drift apart.

The backwards are once differentiable: they scale gradients the forward
computed (or, for sinkhorn, treat the plan as a constant), so a graph built
through them would give a wrong second derivative. The eager Function marks
them ``once_differentiable``: differentiating such a gradient raises torch's
"differentiate twice" error (a gradient whose upstream requires no grad comes
back without a graph). torch.compile refuses double backward itself.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode


# torch's per-backend float32 precision settings that reach a matmul (torch >= 2.9:
# torch.backends.cuda.matmul.fp32_precision = "tf32", or the global
# torch.backends.fp32_precision they inherit from)
_MATMUL_PRECISIONS = tuple(
    m for m in (getattr(getattr(torch.backends, name, None), "matmul", None) for name in ("cuda", "mkldnn"))
    if m is not None and hasattr(m, "fp32_precision"))


def _matmul_precision() -> str | None:
    """torch's float32 matmul precision as the legacy API names it, or None where the
    per-backend API set it (the legacy getter then refuses to summarise it: it raises)."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


@contextlib.contextmanager
def _full_precision_matmuls(legacy: str | None):
    """torch's float32 matmuls at full precision inside, the caller's settings restored
    after: through the API that lowered them. A per-backend setting that only
    inherited the global one (it reads the same) is handed back as inheriting."""
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(legacy)
        return
    inherited = torch.backends.fp32_precision
    saved = [(m, m.fp32_precision) for m in _MATMUL_PRECISIONS]
    for m, _ in saved:
        m.fp32_precision = "ieee"
    try:
        yield
    finally:
        for m, value in saved:
            m.fp32_precision = "none" if value == inherited else value


def op_body(impl: Callable) -> Callable:
    """``impl`` run on its tensors' GPU, with autocast off.

    The GPU: Triton and the CUDA extension launch on the *current* device and
    its stream, so tensors on cuda:1 while cuda:0 is current would be handed to
    the wrong device (a launch error, or another device's stream). The op's
    first tensor argument names the device, as in torch's own ops.

    Autocast: the ops define their own precision: fp32 arithmetic, narrow types
    only as loaded inputs (or bf16 tensor-core dots where both operands are
    bf16), fp32 outputs. A torch formulation inside a body (the torch backend,
    the dense strategy's GEMM, a torch fallback) would otherwise have its
    matmuls cast to bf16 or fp16 by an autocast region around the call -- a
    custom op gets no autocast kernel of its own, so its body runs under the
    caller's autocast state, eagerly and inside a compiled graph alike. For the
    same reason a body runs with the float32 matmul precision at "highest": a
    training script's ``torch.set_float32_matmul_precision("high")`` (or
    ``allow_tf32``, or torch's per-backend ``fp32_precision = "tf32"``) would put
    those GEMMs on TF32 (~5e-4 relative error in q.M, times 1/T in the logits),
    while the kernels beside them are fp32-accurate.
    """
    def in_fp32(args, kwargs):
        # a lowered float32 matmul precision (TF32 on a GPU, bf16 passes on some CPUs)
        # would change the torch formulations' dots, not the kernels': run at full precision
        precision = _matmul_precision()
        if precision == "highest":
            return impl(*args, **kwargs)
        with _full_precision_matmuls(precision):
            return impl(*args, **kwargs)

    def without_autocast(device_type, args, kwargs):
        # meta tensors (shape inference) have no autocast state to ask about
        if device_type != "meta" and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return in_fp32(args, kwargs)
        return in_fp32(args, kwargs)

    @functools.wraps(impl)  # custom_op infers the schema through __wrapped__
    def body(*args, **kwargs):
        device = None
        for a in args:
            if isinstance(a, torch.Tensor):
                device = a.device
                break
        if device is None:
            return impl(*args, **kwargs)
        kind = device.type
        if kind == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return without_autocast(kind, args, kwargs)
        # the usual case in one frame: the ops run at every training step, host-bound
        if (kind == "meta" or not torch.is_autocast_enabled(kind)) and _matmul_precision() == "highest":
            return impl(*args, **kwargs)
        return without_autocast(kind, args, kwargs)
    return body


# What a plain eager call passes; anything else (a fake or functional tensor of a
# trace, a tensor subclass) goes through the custom op and its fake implementation.
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_TRACE, _GRAD, _RUN = range(3)   # how a call goes: the custom op, the autograd Function, the body


def _route(args) -> int:
    """_TRACE, _GRAD or _RUN, in one pass over the arguments (it runs on every call).

    _TRACE: the call is being traced rather than run: under torch.compile, but also
    under AOT autograd's own tracing of a backward (torch.library.opcheck, make_fx),
    which runs with fake tensors and a dispatch mode while ``is_compiling()`` is False,
    or an argument is not a plain tensor. A body that launches a kernel cannot take
    fake tensors. _GRAD: plain tensors, one of which needs a gradient. _RUN: neither."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return _TRACE
    grad_mode = torch.is_grad_enabled()
    route = _RUN
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _PLAIN:
                return _TRACE
            if grad_mode and a.requires_grad:
                route = _GRAD
    return route


def eager_or_compiled(op, impl: Callable, setup_context: Callable | None = None,
                      backward: Callable | None = None) -> Callable:
    """``op``: the registered custom op; ``impl``: the function it was made from;
    ``setup_context``/``backward``: what was passed to ``op.register_autograd``."""
    function = None
    if backward is not None:
        # forward(ctx, ...) rather than a separate setup_context: for the latter,
        # Function.apply binds the arguments with inspect.signature on every call.
        def forward(ctx, *args):
            output = impl(*args)
            ctx.set_materialize_grads(False)  # as the custom op: unused outputs give None
            setup_context(ctx, args, output)
            return output

        function = type(f"{impl.__name__.strip('_')}_function", (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(once_differentiable(backward)),
        })

    def call(*args):
        route = _route(args)
        if route == _TRACE:
            return op(*args)
        if route == _GRAD and function is not None:
            return function.apply(*args)
        return impl(*args)

    call.__name__ = call.__qualname__ = impl.__name__.strip("_")
    call.__doc__ = impl.__doc__
    return call
