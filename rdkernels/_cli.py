"""argparse types shared by the command lines (the harness's and the benchmarks'):
a bad value is a usage error that names the option, not a traceback later."""
from __future__ import annotations

import argparse
import math

from rdkernels._environment import resolve_device


def int_at_least(least: int):
    """An argparse type: an integer >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value
    parse.__name__ = f"integer >= {least}"  # what argparse calls the type in its messages
    return parse


class BriefErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are the error and a pointer to --help,
    without the usage block: a command with dozens of options printed ~20 lines of
    usage above a one-line error. Subparsers inherit it."""

    def error(self, message: str):
        # a parser of commands also reports their unrecognised options: point at a command's help
        where = f"{self.prog} COMMAND --help" if self._subparsers is not None else f"{self.prog} --help"
        self.exit(2, f"{self.prog}: error: {message}\n(see {where})\n")


def float_at_least(least: float, *, strictly: bool = False, most: float | None = None):
    """An argparse type: a finite float >= ``least`` (> with ``strictly``), and <= ``most``."""
    bound = f"{'>' if strictly else '>='} {least:g}" + ("" if most is None else f" and <= {most:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
        if (not math.isfinite(value) or value < least or (strictly and value == least)
                or (most is not None and value > most)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value
    parse.__name__ = f"number {bound}"
    return parse


def device(text: str) -> str:
    """An argparse type: 'auto' or a device this process can run on (see
    :func:`rdkernels._environment.resolve_device`), kept as the string given."""
    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
