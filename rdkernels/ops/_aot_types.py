"""Triton's names of the torch dtypes, for the kernel signatures that each op's
``aot_variants()`` lists (tools/aot_check.py compiles them)."""
import torch

TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.int32: "i32", torch.int64: "i64"}
# the floating types an op takes, in the order the variants are listed
FLOAT_TYPES = {dt: TRITON_TYPE[dt] for dt in (torch.float32, torch.bfloat16, torch.float16)}
