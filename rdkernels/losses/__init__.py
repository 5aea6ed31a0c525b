"""nn.Modules for the distillation losses."""
from rdkernels.losses.crd import CRDLoss

__all__ = ["CRDLoss"]
