"""nn.Modules for the distillation losses."""
from rdkernels.losses.crd import CRDLoss
from rdkernels.losses.dcd import DCDLoss
from rdkernels.losses.kd import KDLoss
from rdkernels.losses.rrd import RRDLoss, RRDMomentumLoss
from rdkernels.losses.wcord import WCoRDLoss

__all__ = ["CRDLoss", "DCDLoss", "KDLoss", "RRDLoss", "RRDMomentumLoss", "WCoRDLoss"]
