"""tools/diagnose_triton_dense.py runs every launch variant; under the interpreter all match float64."""
import importlib.util
from pathlib import Path

import pytest
import torch

from rdkernels.backend import triton_unavailable_reason

TOOL = Path(__file__).resolve().parents[1] / "tools" / "diagnose_triton_dense.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the tool is run for its findings, not tested")
@pytest.mark.skipif(triton_unavailable_reason(torch.device("cpu")) is not None, reason="no Triton interpreter")
def test_every_variant_runs_and_matches_under_the_interpreter(capsys):
    spec = importlib.util.spec_from_file_location("diagnose_triton_dense", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = tool.main(["--batch", "5", "--k", "60", "--n", "200", "--dim", "32"])
    assert set(results) == {(v, e) for v in tool.VARIANTS for e in ("nce", "softmax")}
    for key, errs in results.items():
        assert errs is not None and max(errs) < 1e-5, (key, errs)
    assert "all tiles in one program" in capsys.readouterr().out
