"""The 3xTF32 split the Triton kernels share (rdkernels/ops/_tf32.py), on its own.

Both parts must be TF32 values (low 13 mantissa bits clear: a "tf32" dot reads
only the top 19 bits, so anything below would be dropped on a GPU while the
interpreter kept it), hi must be x rounded to the nearest TF32 value (so lo
takes either sign), their sum must be x to 2^-21 of x, and three dots of the
parts must match a float64 product to fp32 accuracy.
"""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from rdkernels.backend import triton_version_shortfall  # noqa: E402

pytestmark = pytest.mark.skipif(triton_version_shortfall(triton.__version__) is not None,
                                reason=str(triton_version_shortfall(triton.__version__)))

from rdkernels.ops._tf32 import dot_3xtf32, split_tf32, tf32_exact  # noqa: E402

LOW_BITS = 0x1FFF  # the 13 fp32 mantissa bits TF32 does not have


@triton.jit
def _split_kernel(x_ptr, hi_ptr, lo_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    hi, lo = split_tf32(tl.load(x_ptr + offs))
    tl.store(hi_ptr + offs, hi)
    tl.store(lo_ptr + offs, lo)


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                A_EXACT: tl.constexpr, B_EXACT: tl.constexpr):
    m = tl.arange(0, M)
    n = tl.arange(0, N)
    k = tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :]).to(tl.float32)
    b = tl.load(b_ptr + k[:, None] * N + n[None, :]).to(tl.float32)
    c = dot_3xtf32(a, b, tl.zeros([M, N], tl.float32), A_EXACT, B_EXACT)
    tl.store(c_ptr + m[:, None] * N + n[None, :], c)


def _device():
    from rdkernels.backend import triton_interpreter_enabled
    if torch.cuda.is_available() and not triton_interpreter_enabled():
        return "cuda"
    if triton_interpreter_enabled():
        return "cpu"
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")


def _values(n: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # every exponent from subnormal to huge, both signs, and the exact corner cases
    x = torch.randn(n - 8, generator=g, dtype=torch.float64) * torch.pow(2.0, torch.randint(-140, 120, (n - 8,),
                                                                                            generator=g))
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 1 + 2 ** -23, 1 - 2 ** -24, 3.4e38, 1e-45], dtype=torch.float64)
    return torch.cat([x, special]).to(torch.float32).to(device)


def test_split_parts_are_tf32_and_sum_to_x():
    device = _device()
    x = _values(1024, device)
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _split_kernel[(1,)](x, hi, lo, BLOCK=x.numel())
    for name, part in (("hi", hi), ("lo", lo)):
        bits = part.cpu().view(torch.int32)
        assert ((bits & LOW_BITS) == 0).all(), f"{name} has bits below TF32's mantissa"
    x64 = x.double().cpu()
    hi64, lo64 = hi.double().cpu(), lo.double().cpu()
    # down to TF32's subnormal step 2^-136 (fp32 subnormals below it are lost, as with
    # any TF32 conversion)
    floor = torch.tensor(2.0 ** -136, dtype=torch.float64)
    # hi is the nearest TF32 value: half a TF32 ulp (2^-11 of x's binade) off at most
    near = torch.maximum(2.0 ** -11 * x64.abs(), floor)
    assert ((x64 - hi64).abs() <= near).all(), f"hi off by {((x64 - hi64).abs() / near).max()} of half an ulp"
    # lo is the remainder truncated toward zero, so hi + lo is x to one TF32 ulp of lo
    assert (lo64.abs() <= (x64 - hi64).abs()).all()
    bound = torch.maximum(2.0 ** -21 * x64.abs(), floor)
    err = (x64 - hi64 - lo64).abs()
    assert (err <= bound).all(), f"worst error {(err / bound).max()} of the bound"
    # both signs of lo occur (a truncated hi would give lo x's sign every time)
    assert ((lo64 * x64) < 0).any() and ((lo64 * x64) > 0).any()
    # a value that is TF32 already splits into itself and zero
    exact = (x.cpu().view(torch.int32) & LOW_BITS) == 0
    assert torch.equal(hi.cpu()[exact], x.cpu()[exact]) and (lo.cpu()[exact] == 0).all()


@pytest.mark.parametrize("a_dtype,b_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_three_dots_match_float64(a_dtype, b_dtype):
    device = _device()
    g = torch.Generator().manual_seed(1)
    M, N, K = 16, 32, 64
    # widely spread magnitudes: an error in the small parts shows
    a = (torch.randn(M, K, generator=g) * torch.exp(torch.randn(M, K, generator=g) * 2)).to(a_dtype).to(device)
    b = (torch.randn(K, N, generator=g) * torch.exp(torch.randn(K, N, generator=g) * 2)).to(b_dtype).to(device)
    c = torch.empty(M, N, device=device)
    _dot_kernel[(1,)](a, b, c, M=M, N=N, K=K, A_EXACT=tf32_exact(a_dtype), B_EXACT=tf32_exact(b_dtype))
    expected = a.double() @ b.double()
    scale = a.double().abs() @ b.double().abs()  # the size of the terms: fp32 rounding is relative to it
    err = ((c.double() - expected).abs() / scale).max().item()
    assert err < 2e-6, f"3xTF32 product off by {err:.2e} of the terms' size"


def test_exact_dtypes():
    assert tf32_exact(torch.bfloat16) and tf32_exact(torch.float16)
    assert not tf32_exact(torch.float32) and not tf32_exact(torch.float64)
