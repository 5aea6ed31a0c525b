"""The ops under the losses; each is a folder with reference.py, triton.py, cuda.py."""
from rdkernels.ops.bank_contrast import assume_graph_replay, bank_contrast, estimate_nce_z
from rdkernels.ops.bank_update import bank_update_
from rdkernels.ops.dcd import dcd_loss
from rdkernels.ops.fifo_enqueue import fifo_enqueue_
from rdkernels.ops.kd_loss import kd_loss
from rdkernels.ops.l2_normalize import l2_normalize
from rdkernels.ops.shared_bank_contrast import shared_bank_contrast
from rdkernels.ops.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["assume_graph_replay", "bank_contrast", "estimate_nce_z", "bank_update_", "dcd_loss", "fifo_enqueue_",
           "kd_loss", "l2_normalize", "shared_bank_contrast", "sinkhorn", "SinkhornResult"]
