"""rdkernels: fused kernels for representation-distillation losses."""
import torch

from rdkernels._versions import dotted, older_than

# The oldest torch the project is tested with. torch 2.4's custom_op cannot read the
# ops' annotations (``from __future__ import annotations``): every op fails to register.
MIN_TORCH = (2, 5)


def _torch_version_shortfall(version: str) -> str | None:
    """Why torch ``version`` cannot run rdkernels, or None."""
    if not older_than(version, MIN_TORCH):
        return None
    return (f"rdkernels needs torch >= {dotted(MIN_TORCH)}, the oldest release it is tested with; this is torch "
            f"{version} (pip install 'torch>={dotted(MIN_TORCH)}')")


_shortfall = _torch_version_shortfall(torch.__version__)
if _shortfall:
    raise ImportError(_shortfall)
del _shortfall

from rdkernels.backend import BackendUnavailable, get_backend, set_backend, use_backend  # noqa: E402
from rdkernels import ops  # noqa: E402
from rdkernels.losses import CRDLoss, DCDLoss, KDLoss, RRDLoss, RRDMomentumLoss, WCoRDLoss  # noqa: E402
from rdkernels.memory import MemoryBank  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "get_backend", "set_backend", "use_backend", "ops", "CRDLoss", "MemoryBank",
           "DCDLoss", "KDLoss", "RRDLoss", "RRDMomentumLoss", "WCoRDLoss"]
