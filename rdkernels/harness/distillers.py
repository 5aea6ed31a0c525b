"""Build the distillation criterion for ``--distill kd|crd|wcord|dcd|rrd`` and
``--impl reference|fused``.

``reference`` takes the loss from ``rdkernels.losses.reference`` (the public
reference code's formulation, materialised gathers and all); ``fused`` takes
``rdkernels.<Name>Loss``. Both are built from the same initial state (the fused
module loads the reference module's state_dict, whose keys it shares), so two
runs that differ only in ``--impl`` start from identical weights, banks and
queues, and their loss curves can be laid over each other.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings

import torch
from torch import nn

DISTILLERS = ("kd", "crd", "wcord", "dcd", "rrd")
IMPLS = ("reference", "fused")

# (gamma: CE, alpha: KD, beta: distiller) as the reference scripts run each method
DEFAULT_WEIGHTS = {
    "none": (1.0, 0.0, 0.0),
    "kd": (0.1, 0.9, 0.0),
    "crd": (1.0, 0.0, 0.8),
    "wcord": (1.0, 0.0, 0.8),
    "dcd": (1.0, 0.0, 1.0),
    "rrd": (1.0, 0.0, 1.0),
}

# the CE weight when -a or -b is given without -r: the default of -r/--gamma in
# RepDistiller's train_student.py (its -a and -b have none: its scripts always pass them)
REFERENCE_GAMMA = 1.0

_CLASS_NAMES = {"kd": "KDLoss", "crd": "CRDLoss", "wcord": "WCoRDLoss", "dcd": "DCDLoss", "rrd": "RRDLoss"}


@dataclasses.dataclass
class LossOptions:
    """Hyper-parameters handed to the loss constructors (names as RepDistiller's argparse)."""

    kd_T: float = 4.0
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    rrd_tau_s: float = 0.02
    rrd_tau_t: float = 0.1
    dcd_alpha: float = 0.5
    wcord_lambda_local: float = 1.0
    wcord_eps: float = 0.05
    wcord_iters: int = 100


def loss_class(name: str, impl: str) -> type:
    """The nn.Module class for distiller ``name`` in implementation ``impl``."""
    if name not in _CLASS_NAMES:
        raise ValueError(f"distill must be one of {DISTILLERS}, got {name!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    cls_name = _CLASS_NAMES[name]
    if impl == "fused":
        where = "rdkernels"
        cls = getattr(importlib.import_module("rdkernels"), cls_name, None)
    else:
        where = f"rdkernels.losses.reference.{name}"
        try:
            cls = getattr(importlib.import_module(where), cls_name, None)
        except ImportError:
            cls = None
    if cls is None:
        raise RuntimeError(f"--distill {name} --impl {impl} needs {where}.{cls_name}, which is not available")
    return cls


def _construct(cls: type, **kwargs) -> nn.Module:
    """cls(**kwargs) keeping only the keyword arguments its constructor accepts
    (the losses share most hyper-parameter names but not all)."""
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        if dropped:
            warnings.warn(f"{cls.__module__}.{cls.__name__} takes no {dropped}; those options are ignored")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(**kwargs)


def _feature_loss_kwargs(name: str, s_dim: int, t_dim: int, n_data: int, opt: LossOptions) -> dict:
    common = dict(s_dim=s_dim, t_dim=t_dim, feat_dim=opt.feat_dim)
    if name == "crd":
        return dict(common, n_data=n_data, nce_k=opt.nce_k, nce_t=opt.nce_t, nce_m=opt.nce_m)
    if name == "wcord":
        return dict(common, n_data=n_data, nce_k=opt.nce_k, nce_t=opt.nce_t, nce_m=opt.nce_m,
                    lambda_local=opt.wcord_lambda_local, eps=opt.wcord_eps, iters=opt.wcord_iters)
    if name == "dcd":
        return dict(common, alpha=opt.dcd_alpha)
    if name == "rrd":
        return dict(common, queue_size=opt.nce_k, tau_s=opt.rrd_tau_s, tau_t=opt.rrd_tau_t)
    raise ValueError(name)


class Distiller(nn.Module):
    """KD on logits plus (for crd/wcord/dcd/rrd) a representation loss on the pooled features.

    ``forward`` returns ``(loss_kd, loss_feat)``; ``loss_feat`` is a zero tensor
    for plain KD. ``feature_loss.state_dict()`` holds the loss's trainable heads and
    its state (banks, queues, Z) under the loss's own keys.
    """

    def __init__(self, name: str, impl: str, kd: nn.Module, feature_loss: nn.Module | None):
        super().__init__()
        self.name, self.impl = name, impl
        self.kd = kd
        self.feature_loss = feature_loss
        # losses with a memory bank take the dataset index and contrast_idx: forward(f_s, f_t, idx, contrast_idx)
        self.needs_contrast_idx = feature_loss is not None and \
            "contrast_idx" in inspect.signature(feature_loss.forward).parameters

    def forward(self, feat_s, feat_t, logit_s, logit_t, index=None, contrast_idx=None):
        loss_kd = self.kd(logit_s, logit_t)
        if self.feature_loss is None:
            return loss_kd, torch.zeros((), device=logit_s.device)
        if self.needs_contrast_idx:
            loss_feat = self.feature_loss(feat_s, feat_t, index, contrast_idx)
        else:
            loss_feat = self.feature_loss(feat_s, feat_t)
        return loss_kd, loss_feat.reshape(())


def build_distiller(name: str, impl: str, *, s_dim: int, t_dim: int, n_data: int,
                    opt: LossOptions | None = None, seed: int = 0) -> Distiller:
    """The criterion for ``--distill name --impl impl``.

    Its initial state is that of the *reference* module built under ``seed``, so
    reference and fused runs start identically.
    """
    opt = opt or LossOptions()
    kd = _construct(loss_class("kd", impl), T=opt.kd_T)
    if name == "kd":
        return Distiller(name, impl, kd, None)
    kwargs = _feature_loss_kwargs(name, s_dim, t_dim, n_data, opt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = _construct(loss_class(name, "reference"), **kwargs)
    if impl == "reference":
        return Distiller(name, impl, kd, ref)
    fused = _construct(loss_class(name, "fused"), **kwargs)
    try:
        fused.load_state_dict(ref.state_dict())
    except (RuntimeError, KeyError, ValueError) as exc:
        warnings.warn(f"{name}: the fused loss could not load the reference loss's initial state "
                      f"({exc}); the two implementations start from different initial states")
    return Distiller(name, impl, kd, fused)
