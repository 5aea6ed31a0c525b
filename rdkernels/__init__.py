"""rdkernels: fused kernels for representation-distillation losses."""
from rdkernels.backend import BackendUnavailable, get_backend, set_backend, use_backend
from rdkernels import ops
from rdkernels.losses import CRDLoss, DCDLoss, KDLoss, RRDLoss, RRDMomentumLoss, WCoRDLoss
from rdkernels.memory import MemoryBank

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "get_backend", "set_backend", "use_backend", "ops", "CRDLoss", "MemoryBank", "DCDLoss", "KDLoss", "RRDLoss", "RRDMomentumLoss", "WCoRDLoss"]
