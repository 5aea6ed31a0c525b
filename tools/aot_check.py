"""Ahead-of-time compile check for every Triton kernel in rdkernels.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels' arithmetic on the CPU but
never sees what the GPU compiler rejects: dot tiles under 16, layouts that do not
fit, register spills, shared memory over the limit. Triton compiles ahead of time
without a GPU, so this tool compiles every kernel configuration the dispatchers can
launch, for each requested architecture, and runs ``ptxas -v`` on the PTX to read
registers, spills and shared memory. A configuration is compiled as the JIT would
for two kinds of launch: pointers 16-byte aligned and integers of any value, and
(``+ints%16``) every integer a multiple of 16 as well, as at round sizes, whose
vectorised loads are a different register allocation.

Usage::

    python tools/aot_check.py                          # every op, sm_80 and sm_90
    python tools/aot_check.py --arch 90 --ops bank_update --variants 'D=1024,'
    python tools/aot_check.py --json aot.json --jobs 2 --fresh-cache

It prints one row per variant and architecture (registers, spill stores/loads in
bytes, ptxas' static shared memory, Triton's shared memory, their total, seconds),
then the distinct errors and one summary line per kernel; ``--json`` writes the rows.
``--sass`` adds the SASS instruction count of each variant's main loop and the
tensor-core instructions among them (``cuobjdump -sass``): a static measure of
work per loop step, to compare tilings of one kernel without a GPU (divide by
the (row, column) pairs a step covers; stalls and occupancy are not in it).
``TRITON_INTERPRET`` is removed from the environment first: the kernels must be
real JIT functions. Compiles land in Triton's usual cache (``TRITON_CACHE_DIR``);
a cache hit skips the compile but still reads the PTX, so CI may keep that cache.
Each variant's TTGIR is also searched for one miscompile the interpreter cannot
see (:func:`hoisted_loop_values`: a loop-carried value's first-iteration copy
used inside the loop, which Triton 3.6 produced in the dense bank-contrast kernel).

Exit status: 0 when everything compiled within the limits, 1 when a variant failed
to compile, exceeds the architecture's shared memory or register file for its warp
count, shows that miscompile, spills (unless ``--no-fail-on-spill``) or keeps ptxas busy longer than
``--ptxas-timeout``, 2 when an op module cannot be imported or its
``aot_variants()`` is malformed.

Contract (each ``rdkernels/ops/<op>/triton.py``)::

    def aot_variants() -> list[dict]:
        # one dict per kernel configuration the dispatcher can launch
        {"name": str, "kernel": <triton.jit function>,
         "signature": {arg: "*fp32" | "*bf16" | "*i64" | "i32" | "fp32" | "constexpr" ...},
         "constexprs": {name: value}, "num_warps": int, "num_stages": int,
         # optional: the arguments the JIT would see as multiples of 16 (pointer
         # addresses, integers). Default: every pointer argument, which is what a
         # launch on freshly allocated torch tensors gets.
         "divisible_by_16": [arg, ...],
         # optional: further compile options (e.g. {"maxnreg": 128})
         "options": {...},
         # optional: the oldest architecture the dispatcher launches it on (e.g.
         # 90 for a Hopper-only tiling); --arch values below it skip the variant
         "min_arch": int}

Constexpr arguments may be left out of ``signature``; they are added as
``"constexpr"`` (Triton >= 3.2 wants every argument listed). An integer argument
the dispatcher can pass as 1 is a separate specialisation (Triton turns it into a
constant): list it as ``"constexpr"`` with the value 1 in a variant of its own.

Works with Triton 3.6 and 3.9: the PTX's own ``.version`` decides which ptxas can
read it (3.9 writes PTX 9.x for sm_90 that only ``ptxas-blackwell`` reads, 3.6 uses
``ptxas`` for both), so the ptxas Triton itself would use is tried first, then the
others in Triton's package, then the CUDA toolkit's, lowering ``.version`` to what an
older ptxas accepts as a last resort.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# Kernels must be real JITFunctions, not interpreter stand-ins: drop the variable
# before any kernel module (or triton) is imported, here and in worker processes.
_INTERPRET = os.environ.pop("TRITON_INTERPRET", None)
# Triton (>= 3.4) prints its own `ptxas -v` log when asked: read the numbers from the
# very run that built the cubin instead of assembling the PTX a second time.
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"

ROOT = Path(__file__).resolve().parents[1]
OPS_DIR = ROOT / "rdkernels" / "ops"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Largest shared memory one block may use (bytes, opt-in), per compute capability.
SHARED_LIMIT = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376,
                90: 232448, 100: 232448, 103: 232448, 120: 101376}
REGISTER_FILE = 65536  # 32-bit registers per SM (every architecture above)

REQUIRED_KEYS = ("name", "kernel", "signature", "constexprs", "num_warps", "num_stages")


class VariantError(Exception):
    """An op's aot_variants() is missing or malformed."""


# --------------------------------------------------------------------------- discovery

def discover_ops(selected: list[str] | None = None) -> list[str]:
    ops = sorted(p.parent.name for p in OPS_DIR.glob("*/triton.py"))
    if selected:
        unknown = sorted(set(selected) - set(ops))
        if unknown:
            raise VariantError(f"no rdkernels/ops/<op>/triton.py for: {', '.join(unknown)} "
                               f"(found: {', '.join(ops) or 'none'})")
        ops = [op for op in ops if op in selected]
    return ops


_VARIANTS: dict[str, list[dict]] = {}


def load_variants(op: str) -> list[dict]:
    """Import ``rdkernels.ops.<op>.triton`` and return its checked ``aot_variants()``."""
    if op in _VARIANTS:
        return _VARIANTS[op]
    from triton.runtime.jit import JITFunction

    module_name = f"rdkernels.ops.{op}.triton"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure as the op's
        raise VariantError(f"{module_name}: import failed: {exc!r}") from exc
    if not callable(getattr(module, "aot_variants", None)):
        raise VariantError(f"{module_name} has no aot_variants(); every Triton op module must "
                           "list the kernel configurations its dispatcher can launch")
    variants = list(module.aot_variants())
    if not variants:
        raise VariantError(f"{module_name}.aot_variants() returned no variants")
    names = set()
    for i, v in enumerate(variants):
        where = f"{module_name}.aot_variants()[{i}]"
        if not isinstance(v, dict):
            raise VariantError(f"{where} is a {type(v).__name__}, expected a dict")
        missing = [k for k in REQUIRED_KEYS if k not in v]
        if missing:
            raise VariantError(f"{where} lacks {', '.join(missing)}")
        where = f"{where} ({v['name']})"
        if v["name"] in names:
            raise VariantError(f"{where}: duplicate variant name")
        names.add(v["name"])
        kernel = v["kernel"]
        if not isinstance(kernel, JITFunction) or type(kernel).__name__ == "InterpretedFunction":
            raise VariantError(f"{where}: 'kernel' is {type(kernel).__name__}, not a triton.jit "
                               "function (is TRITON_INTERPRET set in this process?)")
        args = list(kernel.arg_names)
        sig = dict(v["signature"])
        for name in v["constexprs"]:
            if name not in args:
                raise VariantError(f"{where}: constexpr {name!r} is not an argument of {kernel.__name__}")
            sig.setdefault(name, "constexpr")
        extra = [a for a in sig if a not in args]
        absent = [a for a in args if a not in sig]
        if extra or absent:
            raise VariantError(f"{where}: signature does not match {kernel.__name__}{tuple(args)}: "
                               f"unknown {extra}, missing {absent}")
        for name, ty in sig.items():
            if ty == "constexpr" and name not in v["constexprs"]:
                raise VariantError(f"{where}: {name!r} is constexpr but has no value in 'constexprs'")
        for name in v.get("divisible_by_16", ()):
            if name not in args or sig[name] == "constexpr":
                raise VariantError(f"{where}: divisible_by_16 names {name!r}, not a runtime argument")
        # Keep Triton's argument order: positions index the attributes.
        v["signature"] = {a: sig[a] for a in args}
    variants += _aligned_variants(variants) + _ones_variants(variants)
    _VARIANTS[op] = variants
    if multiprocessing.parent_process() is None:  # once, not per worker
        _warn_uncovered(module, variants)
    return variants


def _int_args(variant: dict) -> list[str]:
    """The variant's runtime integer arguments (the ones the JIT specialises on value)."""
    return [a for a, ty in variant["signature"].items() if re.fullmatch(r"[iu](8|16|32|64)", ty)]


def _aligned_variants(variants: list[dict]) -> list[dict]:
    """Each variant that leaves its alignment to the default (pointers only) again
    with every integer argument a multiple of 16, as the JIT compiles a launch at
    round sizes (d = 128, strides 128, B = 64, N = 16 384): that specialisation
    vectorises the loads along a row (16-byte copies where the default gets 4-byte
    ones) and so is another register allocation, with spills of its own. It is the
    one a GPU usually runs, so it is checked too."""
    aligned = []
    for v in variants:
        ints = _int_args(v)
        if "divisible_by_16" in v or not ints:
            continue
        aligned.append(dict(v, name=f"{v['name']}+ints%16", divisible_by_16=_aligned(v) + ints))
    return aligned


def _ones_variants(variants: list[dict]) -> list[dict]:
    """Each kernel's first variant again with every integer argument 1. The JIT turns
    an integer argument equal to 1 into a Python constant, on which tensor methods do
    not exist: ``batch.to(tl.int64)`` compiled for batch 64 and failed at batch 1 on a
    GPU (the interpreter wraps every scalar in a tensor and cannot see it). Sizes,
    counts and strides can all be 1 in some call, so the kernel must compile so."""
    ones, seen = [], set()
    for v in variants:
        if id(v["kernel"]) in seen:
            continue
        seen.add(id(v["kernel"]))
        ints = _int_args(v)
        if not ints:
            continue
        ones.append(dict(v, name=f"{v['name']}+ints=1",
                         signature={a: "constexpr" if a in ints else ty for a, ty in v["signature"].items()},
                         constexprs={**v["constexprs"], **{a: 1 for a in ints}},
                         divisible_by_16=[a for a in _aligned(v) if a not in ints]))
    return ones


def _aligned(variant: dict) -> list[str]:
    """The arguments compiled as multiples of 16: the variant's ``divisible_by_16``,
    by default every pointer (what a launch on fresh torch tensors gets)."""
    aligned = variant.get("divisible_by_16")
    if aligned is None:
        aligned = [name for name, ty in variant["signature"].items() if ty.startswith("*")]
    return aligned


def _warn_uncovered(module, variants) -> None:
    from triton.runtime.jit import JITFunction

    covered = {id(v["kernel"]) for v in variants}
    for name, obj in vars(module).items():
        # kernels are named *_kernel; other jit functions are device functions the kernels inline
        if isinstance(obj, JITFunction) and id(obj) not in covered and name.endswith("_kernel") and \
                getattr(obj.fn, "__module__", None) == module.__name__:
            print(f"note: {module.__name__}.{name} is compiled by no variant "
                  "(fine only for a device function called from a kernel)", file=sys.stderr)


# --------------------------------------------------------------------------- compile

def _divisibility_attr():
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        return CUDABackend.parse_attr("D")
    except Exception:  # noqa: BLE001 - older/newer layouts: the attribute itself is stable
        return [["tt.divisibility", 16]]


def compile_variant(variant: dict, arch: int):
    """``triton.compile`` one variant for ``sm_<arch>``; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rdkernels.ops._compile_options import COMPILE_OPTIONS

    sig = variant["signature"]
    positions = {name: i for i, name in enumerate(sig)}
    attr = _divisibility_attr()
    attrs = {(positions[name],): attr for name in _aligned(variant)}
    src = ASTSource(fn=variant["kernel"], signature=dict(sig), constexprs=dict(variant["constexprs"]),
                    attrs=attrs)
    options = {**COMPILE_OPTIONS, **variant.get("options", {})}  # as the dispatchers launch
    options.update(num_warps=int(variant["num_warps"]), num_stages=int(variant["num_stages"]))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


# --------------------------------------------------------------------------- ptxas

def _ptxas_candidates(arch: int) -> list[str]:
    found = []
    try:  # the one Triton itself runs for this architecture
        from triton.backends.nvidia.compiler import get_ptxas
        tool = get_ptxas(arch)
        found.append(tool.path if hasattr(tool, "path") else tool[0])
    except Exception:  # noqa: BLE001
        pass
    try:
        import triton
        bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
        found += [str(bin_dir / "ptxas"), str(bin_dir / "ptxas-blackwell")]
    except Exception:  # noqa: BLE001
        pass
    for env in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
        if os.environ.get(env):
            found.append(os.environ[env])
    found.append(shutil.which("ptxas") or "")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found.append(str(Path(cuda_home) / "bin" / "ptxas"))
    out = []
    for path in found:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in {os.path.realpath(p) for p in out}:
                out.append(path)
    return out


def _triton_ptxas_name(arch: int) -> str:
    found = _ptxas_candidates(arch)
    return Path(found[0]).name if found else "ptxas"


def _triton_ptxas_flags(enable_fp_fusion: bool) -> list[str]:
    """The register-relevant flags Triton's own ptxas call adds, so the counts match
    the cubin Triton builds."""
    flags = [] if enable_fp_fusion else ["--fmad=false"]
    try:
        import inspect

        from triton.backends.nvidia.compiler import CUDABackend
        if "--regAllocOptLevel=2" in inspect.getsource(CUDABackend.make_cubin):
            flags.append("--regAllocOptLevel=2")
    except Exception:  # noqa: BLE001
        pass
    return flags


_VERSION_RE = re.compile(r"Unsupported \.version (\d+\.\d+); current version is '(\d+\.\d+)'")


def run_ptxas(ptx: str, arch: int, flags: list[str]) -> tuple[dict, str]:
    """Assemble ``ptx`` with the first ptxas that accepts it; returns (stats, ptxas used)."""
    target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.MULTILINE)
    gpu = target.group(1) if target else f"sm_{arch}{'a' if arch >= 90 else ''}"
    errors = []
    with tempfile.TemporaryDirectory(prefix="aot_check_") as tmp:
        for ptxas in _ptxas_candidates(arch):
            text, note = ptx, ""
            for _ in range(2):
                src = Path(tmp) / "k.ptx"
                src.write_text(text)
                cmd = [ptxas, "-v", *flags, f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.cubin")]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PTXAS_TIMEOUT)
                log = proc.stdout + proc.stderr
                if proc.returncode == 0:
                    return parse_ptxas_log(log), Path(ptxas).name + note
                old = _VERSION_RE.search(log)
                if old is None:
                    break
                # An older ptxas: try the PTX at the version it reads (Triton does the
                # same rewrite when ptx_version is forced).
                text = re.sub(r"^\.version \d+\.\d+", f".version {old.group(2)}", ptx, flags=re.MULTILINE)
                note = f" (PTX {old.group(1)}->{old.group(2)})"
            errors.append(f"{ptxas}: {log.strip().splitlines()[-1] if log.strip() else proc.returncode}")
    raise RuntimeError("no ptxas accepted the PTX: " + ("; ".join(errors) or "no ptxas found"))


def parse_ptxas_log(log: str) -> dict:
    """Registers of the entry function; spills and stack summed over every function
    (a spill in a noinline callee costs the kernel as much)."""
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    entry = re.search(r"Compiling entry function '[^']+'.*?Used (\d+) registers", log, re.DOTALL)
    smem = re.search(r"Compiling entry function '[^']+'.*?Used \d+ registers[^\n]*?\b(\d+) bytes smem",
                     log, re.DOTALL)
    total = lambda pattern: sum(int(x) for x in re.findall(pattern, log))  # noqa: E731
    return {
        "regs": int(entry.group(1)) if entry else (max(regs) if regs else None),
        "spill_stores": total(r"(\d+) bytes spill stores"),
        "spill_loads": total(r"(\d+) bytes spill loads"),
        "stack": max((int(x) for x in re.findall(r"(\d+) bytes stack frame", log)), default=0),
        "static_smem": int(smem.group(1)) if smem else 0,
    }


# --------------------------------------------------------------------------- one job

PTXAS_TIMEOUT = 120.0  # seconds per ptxas run; set by --ptxas-timeout
SASS = False  # count the main loop's SASS instructions; set by --sass


@contextlib.contextmanager
def _ptxas_time_limit(seconds: float):
    """Give Triton's own ptxas call a time limit: a kernel whose PTX takes minutes to
    assemble is a failure to report, not a CI job to hang."""
    run = subprocess.run

    def limited(cmd, *args, **kwargs):
        if isinstance(cmd, (list, tuple)) and cmd and Path(str(cmd[0])).name.startswith("ptxas"):
            kwargs.setdefault("timeout", seconds)
        return run(cmd, *args, **kwargs)

    subprocess.run = limited
    try:
        yield
    finally:
        subprocess.run = run


_SASS_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[^;]*;")
_BRANCH_TARGET = re.compile(r"\bBRA\b[^;]*?(?:0x([0-9a-f]+)|`\(\.L_x_(\d+)\))")
_LABEL = re.compile(r"^\.L_x_(\d+):")
TENSOR_CORE_OPS = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "UTCHMMA")


def _cuobjdump() -> str | None:
    import triton
    for path in (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump",
                 Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"):
        if path.is_file():
            return str(path)
    return shutil.which("cuobjdump")


def sass_loop(sass: str) -> tuple[int, int] | None:
    """(instructions, tensor-core instructions) between the target of the longest
    backward branch and that branch: the kernel's outermost loop, nested loops
    counted once. None when the code has no loop."""
    addr_of_label: dict[str, int] = {}
    code: list[tuple[int, str, str]] = []  # (address, opcode, line)
    pending: list[str] = []
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        m = _SASS_LINE.match(line)
        if m:
            address = int(m.group(1), 16)
            for name in pending:
                addr_of_label[name] = address
            pending = []
            code.append((address, m.group(2), line))
    loops = []
    for address, opcode, line in code:
        b = _BRANCH_TARGET.search(line) if opcode == "BRA" else None
        if b:
            target = int(b.group(1), 16) if b.group(1) else addr_of_label.get(b.group(2))
            if target is not None and target < address:
                loops.append((target, address))
    if not loops:
        return None
    start, end = max(loops, key=lambda se: se[1] - se[0])
    body = [op for a, op, _ in code if start <= a <= end]
    return len(body), sum(op in TENSOR_CORE_OPS for op in body)


def sass_counts(cubin: bytes) -> tuple[int, int] | None:
    tool = _cuobjdump()
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([tool, "-sass", fh.name], capture_output=True, text=True, timeout=60)
    return sass_loop(out.stdout) if out.returncode == 0 else None


_TTGIR_DEF = re.compile(r"^\s*(%[\w#.]+)(?::\d+)? = (.*)$")
_TTGIR_LOC = re.compile(r"loc\((#loc\d+)\)\s*$")
_TTGIR_VALUE = re.compile(r"%[\w#.]+")


def hoisted_loop_values(ttgir: str) -> list[str]:
    """Loops whose body uses a value computed before the loop from a second copy of a
    loop-carried value's initial load (the same source location, another layout).

    Triton 3.6 compiled the dense bank-contrast kernel that way: the counting
    loop's trip count, a reduction over CSR bounds carried from tile to tile,
    was computed once before the tile loop from the first tile's bounds, loaded
    a second time in the reduction's layout. The interpreter cannot see it (it
    runs the source); on a GPU later tiles lost entries. One message per finding."""
    lines = ttgir.splitlines()
    line_of, loads_at, users = {}, {}, {}   # value -> its line; loc -> loads there; value -> values using it
    for i, line in enumerate(lines):
        m = _TTGIR_DEF.match(line)
        if not m:
            continue
        name = m.group(1)
        line_of[name] = i
        loc = _TTGIR_LOC.search(line)
        if loc and "tt.load" in line:
            loads_at.setdefault(loc.group(1), []).append(name)
        for operand in _TTGIR_VALUE.findall(m.group(2).split(" : ")[0]):
            users.setdefault(operand, []).append(name)
    found = []
    for i, line in enumerate(lines):
        if "scf.for" not in line or "iter_args(" not in line:
            continue
        indent = len(line) - len(line.lstrip())
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("}")
                    and len(lines[j]) - len(lines[j].lstrip()) == indent), len(lines) - 1)
        inits = [init for _, init in re.findall(r"(%[\w#.]+) = (%[\w#.]+)", line.split("iter_args(", 1)[1])]
        body = set(_TTGIR_VALUE.findall("\n".join(lines[i + 1:end + 1])))
        for init in inits:
            loc = _TTGIR_LOC.search(lines[line_of[init]]) if init in line_of else None
            if loc is None:
                continue
            for twin in loads_at.get(loc.group(1), []):
                if twin == init or line_of[twin] > i:
                    continue
                reached, frontier = set(), [twin]
                while frontier:   # everything computed before the loop from the twin
                    v = frontier.pop()
                    if v not in reached:
                        reached.add(v)
                        frontier += [u for u in users.get(v, []) if line_of[u] < i]
                used = sorted(v for v in reached if v in body and v not in inits)
                if used:
                    found.append(f"line {i + 1}: the loop uses {', '.join(used)}, computed before it from {twin}, "
                                 f"a copy of loop-carried {init}'s initial load (its first iteration's value)")
    return found


def loop_sync_loads(ttgir: str) -> int:
    """Tensor loads left synchronous inside loops (``tt.load`` in an ``scf.for`` body
    of the TTGIR, after Triton's pipeliner): each is a wait on memory every step,
    where a staged load is an async copy issued steps ahead. The 16-row RRD tiles
    load their queue tile so (it feeds a dot and a transpose), and their time on an
    H100 went as their tile steps. A count, not a failure: a loop that is short, or
    loads little, may not need staging."""
    count, regions = 0, []   # regions: for each open region, whether an scf.for opened it
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}") and regions:   # "}", "})" (a reduction's body), "} else {"
            regions.pop()
        if text.endswith("{"):
            regions.append("scf.for" in text)
        elif any(regions) and "= tt.load" in text and ": tensor<" in text:
            count += 1
    return count


def check_one(op: str, index: int, arch: int) -> dict:
    """Compile variant ``index`` of ``op`` for ``arch`` and measure it; never raises."""
    row = {"op": op, "variant": None, "kernel": None, "arch": arch, "num_warps": None,
           "num_stages": None, "regs": None, "spill_stores": None, "spill_loads": None,
           "stack": None, "static_smem": None, "triton_shared": None, "shared_total": None,
           "ptxas": None, "loop_instrs": None, "loop_mma": None, "loop_sync_loads": None, "seconds": None,
           "status": "error", "message": ""}
    start = time.perf_counter()
    try:
        variant = load_variants(op)[index]
        row.update(variant=variant["name"], kernel=variant["kernel"].__name__,
                   num_warps=int(variant["num_warps"]), num_stages=int(variant["num_stages"]))
        log = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), _ptxas_time_limit(PTXAS_TIMEOUT):
            warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
            compiled = compile_variant(variant, arch)
        meta = compiled.metadata
        if re.search(r"Used \d+ registers", log.getvalue()):
            stats, ptxas = parse_ptxas_log(log.getvalue()), _triton_ptxas_name(arch)
        else:  # a cache hit, or a Triton without the log knob: assemble the PTX here
            stats, ptxas = run_ptxas(compiled.asm["ptx"], arch,
                                     _triton_ptxas_flags(getattr(meta, "enable_fp_fusion", True)))
        row.update(stats, ptxas=ptxas)
        row["triton_shared"] = int(getattr(meta, "shared", 0) or 0)
        counts = sass_counts(compiled.asm["cubin"]) if SASS else None
        if counts is not None:
            row["loop_instrs"], row["loop_mma"] = counts
        row["loop_sync_loads"] = loop_sync_loads(compiled.asm.get("ttgir", ""))
        row["shared_total"] = row["static_smem"] + row["triton_shared"]
        problems = []
        limit = SHARED_LIMIT.get(arch)
        if limit is not None and row["shared_total"] > limit:
            problems.append(f"shared memory {row['shared_total']} B > {limit} B on sm_{arch}")
        threads = row["num_warps"] * 32
        if row["regs"] is not None and row["regs"] * threads > REGISTER_FILE:
            problems.append(f"{row['regs']} registers x {threads} threads > {REGISTER_FILE}")
        problems += [f"TTGIR {h}" for h in hoisted_loop_values(compiled.asm.get("ttgir", ""))]
        if problems:
            row["message"] = "; ".join(problems)
        elif row["spill_stores"] or row["spill_loads"]:
            row["status"] = "spill"
        else:
            row["status"] = "ok"
    except subprocess.TimeoutExpired:
        row["message"] = f"ptxas ran over {PTXAS_TIMEOUT:g} s (--ptxas-timeout): PTX too large or too slow"
    except Exception as exc:  # noqa: BLE001 - a compile error is a result, not a crash
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        row["message"] = text[-2000:]
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


# --------------------------------------------------------------------------- report

COLUMNS = (("variant", "kernel variant", "<"), ("arch", "arch", ">"), ("num_warps", "warps", ">"),
           ("num_stages", "stages", ">"), ("regs", "regs", ">"), ("spill_stores", "spill st", ">"),
           ("spill_loads", "spill ld", ">"), ("static_smem", "smem", ">"),
           ("triton_shared", "triton shm", ">"), ("shared_total", "shm total", ">"),
           ("loop_instrs", "loop instr", ">"), ("loop_mma", "loop mma", ">"), ("loop_sync_loads", "sync ld", ">"),
           ("seconds", "s", ">"), ("status", "status", "<"))


def format_table(rows: list[dict]) -> str:
    def cell(row, key):
        value = row.get(key)
        if key == "arch":
            return f"sm_{value}"
        if key == "variant" and value is None:
            return f"{row['op']}[?]"
        return "-" if value is None else str(value)

    cells = [[cell(r, k) for k, _, _ in COLUMNS] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(COLUMNS)]
    fmt = lambda values: "  ".join(f"{v:{a}{w}}" for v, w, (_, _, a) in zip(values, widths, COLUMNS))  # noqa: E731
    lines = [fmt([h for _, h, _ in COLUMNS]), "  ".join("-" * w for w in widths)]
    lines += [fmt(c).rstrip() for c in cells]
    return "\n".join(lines)


def format_messages(rows: list[dict]) -> str:
    """Each distinct problem once, with the variants that hit it."""
    by_message: dict[str, list[str]] = {}
    for r in rows:
        if r["message"]:
            by_message.setdefault(r["message"], []).append(f"{r['variant'] or r['op']} sm_{r['arch']}")
    out = []
    for message, where in by_message.items():
        more = f" and {len(where) - 3} more" if len(where) > 3 else ""
        lines = message.splitlines()
        if len(lines) > 20:  # keep the head (where) and the tail (what)
            lines = lines[:12] + ["..."] + lines[-6:]
        out.append(f"ERROR in {', '.join(where[:3])}{more}:\n  " + "\n  ".join(lines) + "\n")
    return "\n".join(out) + ("\n" if out else "")


def format_summary(rows: list[dict]) -> str:
    """One line per kernel and architecture: the worst case over its variants."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["kernel"] or "?", r["arch"]), []).append(r)
    lines = []
    for (op, kernel, arch), rs in groups.items():
        ok = [r for r in rs if r["regs"] is not None]
        worst = lambda key: max((r[key] for r in ok), default="-")  # noqa: E731
        errors = sum(r["status"] == "error" for r in rs)
        spilling = sum(r["status"] == "spill" for r in rs)
        seconds = sum(r["seconds"] or 0 for r in rs)
        lines.append(f"{op}.{kernel} sm_{arch}: {len(rs)} variants, max regs {worst('regs')}, "
                     f"max spill {worst('spill_stores')}/{worst('spill_loads')} B, "
                     f"max shared {worst('shared_total')} B, {errors} errors, {spilling} spilling, {seconds:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def _worker_init(ptxas_timeout: float, sass: bool = False):
    global PTXAS_TIMEOUT, SASS
    PTXAS_TIMEOUT = ptxas_timeout
    SASS = sass
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")


SLOW_SECONDS = 20.0


def _progress(row: dict) -> dict:
    """Name slow compiles as they finish: they are what blows a CI time budget."""
    if row["seconds"] >= SLOW_SECONDS:
        print(f"slow: {row['variant'] or row['op']} sm_{row['arch']} took {row['seconds']:.0f} s",
              file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90],
                        help="compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--ops", nargs="+", default=None,
                        help="op folders under rdkernels/ops (default: every one with a triton.py)")
    parser.add_argument("--variants", default=None, metavar="REGEX",
                        help="only the variants whose name matches REGEX (re.search)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--fail-on-spill", action=argparse.BooleanOptionalAction, default=True,
                        help="exit non-zero when a variant spills registers (default: on)")
    parser.add_argument("--max-spill-bytes", type=int, default=0, metavar="N",
                        help="with --fail-on-spill, tolerate spills of up to N bytes per variant (default 0); "
                             "they are still reported")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="compile processes (default: 2)")
    parser.add_argument("--ptxas-timeout", type=float, default=PTXAS_TIMEOUT, metavar="S",
                        help="fail a variant whose ptxas runs longer than S seconds (default: 120)")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="compile into an empty Triton cache (honest timings; CI default is the "
                             "usual cache, whose hits still give the PTX)")
    parser.add_argument("--quiet", action="store_true", help="print only failing rows and the summary")
    parser.add_argument("--sass", action="store_true",
                        help="also count each variant's main-loop SASS instructions (cuobjdump)")
    args = parser.parse_args(argv)

    if _INTERPRET not in (None, "", "0"):
        print("note: ignoring TRITON_INTERPRET for the ahead-of-time compile", file=sys.stderr)
    tmp_cache = None
    if args.fresh_cache:
        tmp_cache = tempfile.TemporaryDirectory(prefix="aot_cache_")
        os.environ["TRITON_CACHE_DIR"] = tmp_cache.name

    import triton
    start = time.perf_counter()
    try:
        ops = discover_ops(args.ops)
        pattern = re.compile(args.variants) if args.variants else None
        jobs = [(op, i, arch) for op in ops for i, v in enumerate(load_variants(op))
                if pattern is None or pattern.search(v["name"])
                for arch in args.arch if arch >= v.get("min_arch", 0)]
    except VariantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no variants to compile (no op modules, or --variants matched none)", file=sys.stderr)
        return 2

    if args.jobs > 1 and len(jobs) > 1:
        # spawn: a fresh interpreter per worker, no forked Triton/LLVM thread state.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_worker_init,
                                    initargs=(args.ptxas_timeout, args.sass)) as pool:
            rows = [_progress(r) for r in pool.map(check_one, *zip(*jobs), chunksize=4)]
    else:
        _worker_init(args.ptxas_timeout, args.sass)
        rows = [_progress(check_one(*job)) for job in jobs]
    elapsed = time.perf_counter() - start

    def spills_too_much(r):
        return args.fail_on_spill and max(r["spill_stores"] or 0, r["spill_loads"] or 0) > args.max_spill_bytes

    failing = [r for r in rows if r["status"] == "error" or (r["status"] == "spill" and spills_too_much(r))]
    shown = failing if args.quiet else rows
    if shown:
        print(format_table(shown))
        print()
    print(format_messages(rows), end="")
    print(format_summary(rows))
    ptxas = sorted({r["ptxas"] for r in rows if r["ptxas"]})
    n_err = sum(r["status"] == "error" for r in rows)
    n_spill = sum(r["status"] == "spill" for r in rows)
    print(f"\n{len(rows)} compiles ({len(rows) // len(args.arch)} variants x {len(args.arch)} archs) "
          f"with Triton {triton.__version__}, ptxas: {', '.join(ptxas) or '-'}; "
          f"{n_err} errors, {n_spill} spilling; {elapsed:.1f} s with {args.jobs} job(s)")
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "archs": args.arch,
                                         "seconds": round(elapsed, 2), "rows": rows}, indent=1))
    if tmp_cache is not None:
        tmp_cache.cleanup()
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
