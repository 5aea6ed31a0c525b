"""``python -m rdkernels``: the environment report a bug report starts from."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rdkernels
from helpers import stub_cuda_gpu
from rdkernels import backend
from rdkernels.__main__ import OPS, TRITON_ONLY_OPS, collect
from rdkernels._environment import cpu_model


def test_report_names_auto_choice_and_reasons_for_every_op_and_device():
    report = collect()
    assert report["rdkernels"]["version"] == rdkernels.__version__
    assert report["versions"]["torch"] == torch.__version__
    devices = [entry["device"] for entry in report["devices"]]
    assert devices[0] == "cpu" and len(devices) == 1 + torch.cuda.device_count() * torch.cuda.is_available()
    assert report["devices"][0]["name"] == f"{cpu_model()}, {os.cpu_count()} cores"   # the model, not "x86_64"
    for entry in report["devices"]:
        device = torch.device(entry["device"])
        assert set(entry["ops"]) == set(OPS + TRITON_ONLY_OPS)
        for op, choice in entry["ops"].items():
            if op in TRITON_ONLY_OPS:   # cuda runs Triton's kernel, on a GPU
                assert choice["auto"] == backend.resolve_triton_only(device, op, "auto")
                runnable = {"triton": backend.triton_unavailable_reason(device) is None,
                            "cuda": device.type == "cuda"
                                    and backend.resolve_triton_only(device, op, "cuda") == "triton"}
            else:
                assert choice["auto"] == backend.resolve(device, op, "auto")
                runnable = {name: name in backend.available_backends(device, op) for name in ("triton", "cuda")}
            # every backend is either runnable here or has its reason
            for name in ("triton", "cuda"):
                assert runnable[name] != (name in choice["unavailable"]), (entry["device"], op, name)
    cpu_ops = report["devices"][0]["ops"]
    assert all(choice["auto"] == "torch" for choice in cpu_ops.values())
    assert all("CUDA tensors" in choice["unavailable"]["cuda"] for choice in cpu_ops.values())


def test_the_ops_listed_are_the_ones_the_dispatchers_resolve():
    # a new op should show up in the report: every name passed to backend.resolve is listed
    root = Path(rdkernels.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        names |= set(re.findall(r"resolve\([^,()]+(?:\([^()]*\))?[^,()]*, \"(\w+)\"", path.read_text()))
        names |= set(re.findall(r'_CUDA_OP = "(\w+)"', path.read_text()))
    assert names and names <= set(OPS), sorted(names - set(OPS))
    triton_only = {name for path in root.rglob("*.py")
                   for name in re.findall(r'resolve_triton_only\([^,()]+, "(\w+)"', path.read_text())}
    assert triton_only == set(TRITON_ONLY_OPS), triton_only


def test_command_line_prints_text_and_json():
    run = [sys.executable, "-m", "rdkernels"]
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert text.startswith(f"rdkernels {rdkernels.__version__}") and "bank_contrast -> torch" in text
    report = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert report["devices"][0]["device"] == "cpu"


def test_report_on_a_gpu_the_extension_cannot_run_on(monkeypatch, capsys):
    """A T4 (sm_75) with the default sm_80/sm_90 build: auto -> triton, and the report says why."""
    import types

    from rdkernels.__main__ import _print

    stub_cuda_gpu(monkeypatch, (7, 5), "cudaErrorNoKernelImageForDevice: ...", ops=OPS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 2**30))
    report = collect()
    gpu = report["devices"][1]
    assert gpu["device"] == "cuda:0" and gpu["capability"] == "sm_75"
    assert all(choice["auto"] == "triton" for choice in gpu["ops"].values())
    assert all("need sm_80 or newer" in gpu["ops"][op]["unavailable"]["cuda"] for op in OPS)
    assert all("cuda" not in gpu["ops"][op]["unavailable"] for op in TRITON_ONLY_OPS)   # Triton's kernel runs
    _print(report)
    text = capsys.readouterr().out
    assert "cuda:0: Tesla T4 (sm_75, 15.0 GiB)" in text and "built for sm_80, sm_90" in text
    # (the Triton-only ops' cuda backend runs Triton's kernel: they are not on that line)
    assert f"no cuda ({', '.join(OPS)}): rdkernels' CUDA kernels need sm_80 or newer" in text


def test_a_misspelt_backend_is_reported_not_raised():
    run = subprocess.run([sys.executable, "-m", "rdkernels"], capture_output=True, text=True,
                         env={**os.environ, "RDKERNELS_BACKEND": "cdua"})
    assert run.returncode == 2 and "'cdua'" in run.stdout
    assert "invalid: the environment variable RDKERNELS_BACKEND must be one of" in run.stdout


def test_the_backend_variable_is_named_when_misspelt_and_empty_means_unset(monkeypatch):
    from rdkernels.ops import l2_normalize
    monkeypatch.setattr(backend, "_forced", None)   # no set_backend call: the variable decides
    monkeypatch.setenv("RDKERNELS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="environment variable RDKERNELS_BACKEND must be one of .* got 'gpu'"):
        l2_normalize(torch.randn(2, 4))
    monkeypatch.setenv("RDKERNELS_BACKEND", "")
    assert rdkernels.get_backend() == "auto" and l2_normalize(torch.randn(2, 4)).shape == (2, 4)
    monkeypatch.setenv("RDKERNELS_BACKEND", "Torch")
    assert rdkernels.get_backend() == "torch"
