"""Comparing a package's version string with the oldest release rdkernels is tested with."""
from __future__ import annotations

import re


def older_than(version: str, oldest: tuple[int, int]) -> bool:
    """Whether ``version`` ("2.4.1+cu121", "3.3.0+git3b0f1b2") is below ``oldest``
    (major, minor). A string that does not start with ``major.minor`` (a source build
    that does not say) is not older: it is let through."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is not None and (int(found[1]), int(found[2])) < oldest


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
