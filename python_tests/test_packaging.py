"""The source distribution holds everything a wheel build needs.

``python -m build`` and ``pip install rdkernels-*.tar.gz`` build the wheel from
the sdist, not from the checkout: an sdist without ``csrc/`` and
``CMakeLists.txt`` gives a wheel that silently lacks the CUDA extension (or a
failed build under ``RDKERNELS_BUILD_CUDA=1``).
"""
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "CMakeLists.txt", "csrc", "rdkernels"]


def _sdist_members(tmp_path: Path) -> set[str]:
    # Build from a copy so the checkout gets no egg-info or dist/ of the test's making.
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        path = ROOT / name
        if not path.exists():
            continue
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    env = dict(os.environ, RDKERNELS_BUILD_CUDA="0")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                   cwd=src, env=env, check=True, capture_output=True)
    (archive,) = (tmp_path / "dist").glob("rdkernels-*.tar.gz")
    with tarfile.open(archive) as tar:
        # members are "rdkernels-<version>/<path>"
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_holds_the_cuda_sources_and_the_cmake_build(tmp_path):
    members = _sdist_members(tmp_path)
    needed = {"CMakeLists.txt", "setup.py", "pyproject.toml"}
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").iterdir() if p.is_file()}
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "rdkernels").rglob("*.py")}
    assert not needed - members, f"missing from the sdist: {sorted(needed - members)}"
