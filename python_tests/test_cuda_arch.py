"""The cuda backend on a GPU its extension has no code for.

A launch there fails with "no kernel image is available for execution on the
device"; instead ``auto`` moves on to Triton and an explicit ``cuda`` says why
and, where a rebuild can help, how. Runs without a GPU: the device's capability
and the runtime's answer are stubbed; on a GPU the real extension is asked too.
"""
import pytest
import torch

from helpers import stub_cuda_gpu
from rdkernels import backend
from rdkernels.backend import MIN_CUDA_ARCH, BackendUnavailable, arch_mismatch

NO_IMAGE = "cudaErrorNoKernelImageForDevice: no kernel image is available for execution on the device"


@pytest.mark.parametrize("capability, compiled, image_error, runs", [
    ((8, 0), [800, 900], "", True),
    ((8, 6), [800, 900], "", True),    # sm_80 code runs on every sm_8x
    ((9, 0), [800, 900], "", True),
    ((12, 0), [800, 900], "", True),   # newer GPUs compile the embedded PTX
    ((9, 0), [800], "", True),
    ((8, 0), [860], "", False),        # an A100 with an sm_86 build
    ((8, 0), [900], "", False),        # an A100 with a Hopper-only build
    ((9, 0), [800], NO_IMAGE, False),  # "80-real": SASS only, no PTX for newer GPUs
    ((8, 0), [], "", True),            # an extension too old to say: no refusal
])
def test_arch_mismatch(capability, compiled, image_error, runs):
    reason = arch_mismatch(capability, compiled, image_error)
    assert (reason is None) == runs, reason
    if not runs:
        gpu = f"{capability[0]}{capability[1]}"
        assert f"sm_{gpu}" in reason and f"RDKERNELS_CUDA_ARCHS={gpu}" in reason
        assert all(f"sm_{a // 10}" in reason for a in compiled) and image_error in reason


def test_other_runtime_errors_are_not_blamed_on_the_build():
    error = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    reason = arch_mismatch((9, 0), [800, 900], error)
    assert error in reason and "RDKERNELS_CUDA_ARCHS" not in reason


@pytest.mark.parametrize("capability", [(7, 5), (7, 0), (6, 1)])
def test_gpus_older_than_the_kernels_need_are_refused_without_rebuild_advice(capability):
    reason = arch_mismatch(capability, [800, 900])
    assert f"sm_{MIN_CUDA_ARCH} or newer" in reason and "RDKERNELS_CUDA_ARCHS" not in reason


@pytest.fixture
def fake_gpu(monkeypatch):
    """cuda:0 is an sm_75 GPU; the extension has bank_update and was built for sm_80 and sm_90."""
    stub_cuda_gpu(monkeypatch, (7, 5), NO_IMAGE)
    return torch.device("cuda", 0)


def test_auto_skips_an_extension_without_code_for_the_gpu(fake_gpu):
    assert backend.resolve(fake_gpu, "bank_update", "auto") == "triton"
    assert backend.available_backends(fake_gpu, "bank_update") == ["torch", "triton"]


def test_asking_for_cuda_on_an_old_gpu_says_why(fake_gpu):
    with pytest.raises(BackendUnavailable, match=rf"need sm_{MIN_CUDA_ARCH} or newer.*this GPU is sm_75"):
        backend.resolve(fake_gpu, "bank_update", "cuda")


def test_the_runtime_answer_refuses_what_the_list_allows(fake_gpu, monkeypatch):
    monkeypatch.setattr(backend, "_device_capability", lambda index: (9, 0))
    with pytest.raises(BackendUnavailable, match="RDKERNELS_CUDA_ARCHS=90.*"):
        backend.resolve(fake_gpu, "bank_update", "cuda")
    assert backend.resolve(fake_gpu, "bank_update", "auto") == "triton"


def test_a_gpu_with_code_keeps_the_cuda_backend_and_is_probed_once(fake_gpu, monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "_kernel_image_error", lambda module, index: calls.append(index) or "")
    monkeypatch.setattr(backend, "_device_capability", lambda index: (9, 0))
    for _ in range(3):
        assert backend.resolve(fake_gpu, "bank_update", "auto") == "cuda"
    assert calls == [0]


def test_the_probe_is_a_constant_to_torch_compile(fake_gpu, monkeypatch):
    # the probe calls into the extension, which dynamo cannot trace (a graph break here stands
    # in for the pybind11 call): fullgraph must still compile, and take the probe's answer
    monkeypatch.setattr(backend, "_kernel_image_error",
                        lambda module, index: (torch._dynamo.graph_break(), NO_IMAGE)[1])

    @torch.compile(fullgraph=True, backend="eager")
    def pick(x):
        return x + 1, backend.resolve(fake_gpu, "bank_update", "auto")

    torch._dynamo.reset()
    try:
        assert pick(torch.zeros(2))[1] == "triton"
    finally:
        torch._dynamo.reset()


def test_the_built_extension_reports_its_architectures_and_runs_here():
    module, why_not = backend._cuda_extension()
    if module is None:
        pytest.skip(why_not)
    archs = module.compiled_archs()
    assert archs and archs == sorted(archs) and all(a >= 10 * MIN_CUDA_ARCH and a % 10 == 0 for a in archs), archs
    if not torch.cuda.is_available():
        pytest.skip("no GPU to ask for a kernel image")
    index = torch.cuda.current_device()
    assert module.kernel_image_error() == ""
    assert backend.cuda_unavailable_reason(torch.device("cuda", index), "bank_update") is None
