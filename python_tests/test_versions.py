"""Versions of torch and Triton older than the ones the project is tested with are
refused with a reason, not run into a kernel that fails to compile."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import stub_cuda_gpu
from rdkernels import backend
from rdkernels.backend import MIN_TRITON, BackendUnavailable, triton_version_shortfall


@pytest.mark.parametrize("version, runs", [
    ("3.0.0", False), ("3.3.1", False), ("2.3.1", False),
    ("3.4.0", True), ("3.6.0", True), ("3.10.0", True), ("4.0.0", True),
    ("3.5.0+git3b0f1b2", True), ("3.3.0+git3b0f1b2", False),
    ("", True), ("main", True),  # a source build that does not say: let through
])
def test_triton_version_shortfall(version, runs):
    reason = triton_version_shortfall(version)
    assert (reason is None) == runs, reason
    if not runs:
        oldest = ".".join(map(str, MIN_TRITON))
        assert f"triton {version} is older than {oldest}" in reason and f"triton>={oldest}" in reason


def test_the_installed_triton_is_supported():
    triton = pytest.importorskip("triton")
    assert triton_version_shortfall(triton.__version__) is None
    assert backend._triton_import_error() is None


def _old_triton(monkeypatch):
    """Triton 3.3 installed, no CUDA extension."""
    monkeypatch.setattr(backend, "_probes", {"triton": triton_version_shortfall("3.3.1"),
                                             "cuda": (None, "the CUDA extension rdkernels._C is not built")})


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_old_triton_is_refused_by_name_and_auto_falls_back(monkeypatch, device):
    _old_triton(monkeypatch)
    dev = torch.device(device)   # resolve reads the device type only: no GPU needed
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' cannot run bank_update: triton 3\.3\.1 is older"):
        backend.resolve(dev, "bank_update", "triton")
    assert backend.resolve(dev, "bank_update", "auto") == "torch"
    assert backend.available_backends(dev, "bank_update") == ["torch"]


def test_requested_backend_is_the_call_s_else_the_global_one_lower_cased():
    assert backend.requested_backend("AUTO") == "auto" and backend.requested_backend("Triton") == "triton"
    with backend.use_backend("TORCH"):
        assert backend.requested_backend() == "torch" and backend.requested_backend("Cuda") == "cuda"
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.requested_backend("gpu")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_triton_only_ops_resolve_by_device_size_and_request(monkeypatch, device):
    """The ops with a Triton kernel and no CUDA one (l2_normalize, fifo_enqueue_):
    auto and cuda take Triton's on a GPU only, an explicit triton runs anywhere
    Triton does, and a size the kernel cannot take moves auto to torch but
    makes an explicit triton raise, as a Triton that cannot run does."""
    dev = torch.device(device)
    monkeypatch.setattr(backend, "triton_unavailable_reason", lambda d: None)
    for name in ("auto", "cuda", None):
        with backend.use_backend(name or "auto"):
            if backend.cuda_device_reason(dev) and (name or backend.get_backend()) == "cuda":
                continue  # raises: below
            assert backend.resolve_triton_only(dev, "op", name) == ("triton" if device == "cuda" else "torch")
            assert backend.resolve_triton_only(dev, "op", name, too_large="rows too wide") == "torch"
    assert backend.resolve_triton_only(dev, "op", "triton") == "triton"
    assert backend.resolve_triton_only(dev, "op", "torch") == "torch"
    with pytest.raises(BackendUnavailable, match="backend 'triton' cannot run op: rows too wide"):
        backend.resolve_triton_only(dev, "op", "triton", too_large="rows too wide")
    monkeypatch.setattr(backend, "triton_unavailable_reason", lambda d: "no Triton here")
    assert backend.resolve_triton_only(dev, "op", "auto") == "torch"
    with pytest.raises(BackendUnavailable, match="backend 'triton' cannot run op: no Triton here"):
        backend.resolve_triton_only(dev, "op", "triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve_triton_only(dev, "op", "gpu")
    # a call the op sends to torch by design: every request takes it, a misspelt one still raises,
    # and so does triton where Triton cannot run (the request could not have been honoured)
    for name in ("triton", "cuda", "auto", "torch", None):
        if backend.cuda_device_reason(dev) and name == "cuda":
            continue
        if name == "triton":
            with pytest.raises(BackendUnavailable, match="backend 'triton' cannot run op: no Triton here"):
                backend.resolve_triton_only(dev, "op", name, too_large="rows too wide", torch_only=True)
            continue
        assert backend.resolve_triton_only(dev, "op", name, too_large="rows too wide", torch_only=True) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve_triton_only(dev, "op", "gpu", torch_only=True)
    monkeypatch.setattr(backend, "triton_unavailable_reason", lambda d: None)
    assert backend.resolve_triton_only(dev, "op", "triton", too_large="rows too wide", torch_only=True) == "torch"
    # cuda on CPU tensors raises, as it does for the ops with a CUDA kernel, whatever the call
    if backend.cuda_device_reason(dev):
        for kwargs in ({}, {"too_large": "rows too wide"}, {"torch_only": True}):
            with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run op: the cuda backend "
                                                         "needs CUDA tensors, got cpu tensors"):
                backend.resolve_triton_only(dev, "op", "cuda", **kwargs)
            with backend.use_backend("cuda"), pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
                backend.resolve_triton_only(dev, "op", None, **kwargs)


def test_the_environment_report_names_the_old_triton(monkeypatch, capsys):
    from rdkernels.__main__ import main
    _old_triton(monkeypatch)
    main([])
    assert "triton 3.3.1 is older than" in capsys.readouterr().out


def test_the_torch_floor_is_what_setup_requires():
    """rdkernels.MIN_TORCH (checked on import) and setup.py's requirement agree, and
    the installed torch meets them."""
    import rdkernels
    oldest = ".".join(map(str, rdkernels.MIN_TORCH))
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8")
    assert f'"torch>={oldest}"' in setup
    assert f'"triton>={".".join(map(str, MIN_TRITON))}"' in setup
    assert rdkernels._torch_version_shortfall(torch.__version__) is None


@pytest.mark.parametrize("version, runs", [
    ("2.4.1+cu121", False), ("1.13.1", False), ("2.5.1", True), ("2.11.0+cu130", True),
    ("2.13.0+cpu", True), ("2.14.0.dev20270101", True), ("3.0.0", True),
])
def test_torch_version_shortfall(version, runs):
    import rdkernels
    reason = rdkernels._torch_version_shortfall(version)
    assert (reason is None) == runs, reason
    if not runs:
        assert f"torch {version}" in reason and "pip install" in reason


def test_importing_under_an_old_torch_raises_a_clear_error():
    """A stand-in torch that reports 2.4.1: the import fails with the reason, before any
    op is registered (torch 2.4's custom_op cannot read the ops' annotations)."""
    code = ("import torch; torch.__version__ = '2.4.1'\n"
            "try:\n    import rdkernels\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ImportError: rdkernels needs torch >= ") and "torch 2.4.1" in out


def test_the_cuda_bank_contrast_needs_a_supported_triton(monkeypatch):
    """Its split merges and the dense strategy's table are Triton kernels: with an old
    Triton, auto leaves it for torch and an explicit request says why; the CUDA ops
    with no Triton in them still run."""
    stub_cuda_gpu(monkeypatch, (9, 0), "", ops=("bank_contrast", "bank_update"))
    monkeypatch.setattr(backend, "triton_unavailable_reason", lambda device: triton_version_shortfall("3.3.1"))
    gpu = torch.device("cuda", 0)
    assert backend.resolve(gpu, "bank_contrast") == "torch"
    with pytest.raises(BackendUnavailable, match=r"merges partial results with Triton kernels, and triton 3\.3\.1"):
        backend.resolve(gpu, "bank_contrast", "cuda")
    assert backend.resolve(gpu, "bank_update") == "cuda"


_WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None   # import triton raises ImportError
import torch
import rdkernels
from rdkernels import backend
assert backend.triton_unavailable_reason(torch.device("cpu")) is not None
torch.manual_seed(0)
crd = rdkernels.CRDLoss(s_dim=8, t_dim=8, n_data=60, feat_dim=4, nce_k=10, strategy="dense")
loss = crd(torch.randn(5, 8), torch.randn(5, 8), torch.arange(5))
loss.backward()
assert torch.isfinite(loss)
print("ok")
"""


def test_without_triton_the_torch_backend_runs():
    """Triton is imported only by the modules that hold kernels: with none installed
    (or a broken install) the package imports and a CRD step runs on torch."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


_INTERPRETER_SET_LATE = """
import os, torch, rdkernels
from rdkernels.backend import BackendUnavailable
os.environ["TRITON_INTERPRET"] = "1"   # too late: importing rdkernels imported Triton
q, bank, idx = torch.randn(4, 16), torch.randn(50, 16), torch.randint(0, 50, (4, 6))
try:
    rdkernels.ops.bank_contrast(q, bank, idx, temperature=0.1, backend="triton")
except BackendUnavailable as exc:
    print(exc)
assert torch.isfinite(rdkernels.ops.bank_contrast(q, bank, idx, temperature=0.1))   # auto: torch
"""


def test_an_interpreter_asked_for_after_import_is_refused_with_the_fix():
    """Triton reads TRITON_INTERPRET at import: set later, an interpreted kernel fails
    deep inside Triton; rdkernels says what happened instead, and auto runs torch."""
    import subprocess
    import sys
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_SET_LATE], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRITON_INTERPRET=1 was set after rdkernels was imported" in done.stdout, done.stdout
