"""The ops under the losses; each is a folder with reference.py, triton.py, cuda.py."""
from rdkernels.ops.bank_contrast import bank_contrast, estimate_nce_z
from rdkernels.ops.bank_update import bank_update_

__all__ = ["bank_contrast", "estimate_nce_z", "bank_update_"]
