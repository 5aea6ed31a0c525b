"""Every Triton launch in the package passes rdkernels.ops._compile_options.COMPILE_OPTIONS.

The interpreter drops compile options, so no run on a CPU can see a launch that
forgot them; this reads the source instead. A launch is a call of
``<name>_kernel[grid](...)`` (TunedKernel adds the options itself).
"""
import ast
from pathlib import Path

import rdkernels
from rdkernels.ops._compile_options import COMPILE_OPTIONS

OPS = Path(rdkernels.__file__).parent / "ops"


def _launches(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                and isinstance(node.func.value, (ast.Name, ast.Attribute))):
            name = node.func.value.id if isinstance(node.func.value, ast.Name) else node.func.value.attr
            if name.endswith("_kernel") or name in ("kernel", "tuner"):
                yield name, node


def test_every_launch_passes_the_compile_options():
    found, missing = 0, []
    for path in sorted(OPS.rglob("*.py")):
        for name, call in _launches(ast.parse(path.read_text())):
            found += 1
            if not any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == "COMPILE_OPTIONS"
                       for k in call.keywords):
                missing.append(f"{path.relative_to(OPS)}:{call.lineno} {name}[...]")
    assert found >= 15, f"only {found} launches found: has the launch syntax changed?"
    assert not missing, "launches without **COMPILE_OPTIONS: " + ", ".join(missing)


def test_fusion_is_asked_for():
    # Triton 3.10 turns fusion off by default; the kernels were tuned with it on
    assert COMPILE_OPTIONS == {"enable_fp_fusion": True}
