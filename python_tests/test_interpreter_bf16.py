"""The interpreter patch the native-bf16 kernel tests rely on (interpreter_bf16.py):
its bf16 dot and fp32 -> bf16 rounding match torch's, bit for bit."""
import numpy as np
import pytest
import torch

import interpreter_bf16
from rdkernels.backend import triton_interpreter_enabled

pytestmark = pytest.mark.skipif(not triton_interpreter_enabled(), reason="patches Triton's CPU interpreter")


def test_rounding_matches_torch_to_the_bit():
    values = torch.cat([
        torch.randn(4096) * 10.0 ** torch.randint(-30, 30, (4096,)),
        # ties to even both ways, the largest finite values, infinities, NaN, signed zeros
        torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 3.3895e38, -3.3895e38,
                      float("inf"), float("-inf"), float("nan"), 0.0, -0.0]),
    ]).to(torch.float32)
    bits = interpreter_bf16.fp32_to_bf16_bits(values.numpy())
    expected = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values.numpy())
    np.testing.assert_array_equal(bits[finite], expected[finite])
    assert np.isnan(interpreter_bf16.bf16_bits_to_fp32(bits[~finite])).all()
    np.testing.assert_array_equal(interpreter_bf16.bf16_bits_to_fp32(expected[finite]),
                                  values.to(torch.bfloat16).float().numpy()[finite])


def test_patched_interpreter_dots_and_rounds_bf16_as_a_gpu(monkeypatch):
    import triton
    import triton.language as tl

    @triton.jit
    def dot_and_round(a_ptr, b_ptr, c_ptr, x_ptr, y_ptr):
        r = tl.arange(0, 16)
        at = r[:, None] * 16 + r[None, :]
        tl.store(c_ptr + at, tl.dot(tl.load(a_ptr + at), tl.load(b_ptr + at)))
        tl.store(y_ptr + at, tl.load(x_ptr + at).to(tl.bfloat16))

    interpreter_bf16.install(monkeypatch)
    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    x = torch.randn(16, 16)
    c, y = torch.empty(16, 16), torch.empty(16, 16, dtype=torch.bfloat16)
    dot_and_round[(1,)](a, b, c, x, y)
    # bf16 products are exact in fp32; only the fp32 summation order may differ
    torch.testing.assert_close(c, a.double().matmul(b.double()).float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(y, x.to(torch.bfloat16))
