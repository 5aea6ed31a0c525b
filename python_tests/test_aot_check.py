"""tools/aot_check.py compiles a real op for sm_90 without a GPU and reads ptxas' numbers."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "aot_check.py"

triton = pytest.importorskip("triton")
from rdkernels.backend import triton_version_shortfall  # noqa: E402
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

pytestmark = [
    pytest.mark.skipif(not any((_BIN / n).is_file() for n in ("ptxas", "ptxas-blackwell")),
                       reason="Triton's package ships no ptxas"),
    pytest.mark.skipif(triton_version_shortfall(triton.__version__) is not None,
                       reason=str(triton_version_shortfall(triton.__version__))),
]


def _run(tmp_path, *args):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # conftest sets it; the tool needs real JIT functions
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_bank_update_compiles_for_sm90(tmp_path):
    out = tmp_path / "aot.json"
    # The smallest and largest tile (4 and 8 warps) keep the test short; CI compiles all.
    proc = _run(tmp_path, "--arch", "90", "--ops", "bank_update", "--variants", r"\[D=(16|1024),",
                "--json", str(out), "--jobs", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from rdkernels.ops.bank_update.triton import aot_variants
    wanted = [v["name"] for v in aot_variants() if v["name"].startswith(("bank_update_kernel[D=16,",
                                                                         "bank_update_kernel[D=1024,"))]
    rows = json.loads(out.read_text())["rows"]
    # the tool adds the first variant again with every integer argument 1 (the JIT's
    # constant specialisation of 1, which a kernel must compile under too)
    ones = [r for r in rows if r["variant"].endswith("+ints=1")]
    assert [r["variant"] for r in ones] == [wanted[0] + "+ints=1"] and ones[0]["status"] == "ok"
    rows = [r for r in rows if r not in ones]
    assert [r["variant"] for r in rows] == wanted and len(wanted) > 12
    assert {r["num_warps"] for r in rows} == {4, 8}
    for row in rows:
        assert row["arch"] == 90 and row["status"] == "ok", row
        assert 0 < row["regs"] <= 255
        assert row["spill_stores"] == row["spill_loads"] == 0
        assert row["triton_shared"] >= 0
    # The printed table carries the same rows, register column filled in.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("bank_update_kernel[")]
    assert len(lines) == len(rows) + len(ones)
    assert all(ln.split()[1] == "sm_90" and ln.split()[4].isdigit() for ln in lines)


def test_bad_variant_is_reported(tmp_path):
    proc = _run(tmp_path, "--ops", "no_such_op")
    assert proc.returncode == 2
    assert "no_such_op" in proc.stderr


def test_a_variant_is_compiled_only_from_its_min_arch(tmp_path):
    """A Hopper-only tiling (min_arch 90: the RRD kernel's 64-row blocks) is not
    compiled for sm_80, where the dispatcher never launches it."""
    out = tmp_path / "aot.json"
    proc = _run(tmp_path, "--arch", "80", "90", "--ops", "shared_bank_contrast", "--variants",
                r"^shared_bank_contrast_d16_fp32_b(16n16w4|64n16w8)$", "--json", str(out), "--jobs", "1",
                "--no-fail-on-spill", "--sass")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if not r["variant"].endswith("+ints=1")]
    assert sorted((r["variant"][-8:], r["arch"]) for r in rows) == [
        ("b16n16w4", 80), ("b16n16w4", 90), ("b64n16w8", 90)], rows
    # --sass: the tile loop's instructions, tensor-core ones among them (mma.sync, wgmma)
    assert all(r["loop_instrs"] > r["loop_mma"] > 0 for r in rows), rows


def test_round_sizes_are_compiled_too(tmp_path):
    """Each variant is compiled twice: as for any integer arguments, and (+ints%16) as
    the JIT specialises a launch whose integers are all multiples of 16 (d = 128 and
    its strides), where the row loads are vectorised: another main loop."""
    out = tmp_path / "aot.json"
    proc = _run(tmp_path, "--arch", "90", "--ops", "shared_bank_contrast", "--variants",
                r"^shared_bank_contrast_d128_fp32_b16n16w4(\+ints%16)?$", "--json", str(out), "--jobs", "1",
                "--sass")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["variant"].rpartition("_")[2]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["b16n16w4", "b16n16w4+ints%16"], rows
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["b16n16w4+ints%16"]["loop_instrs"] < rows["b16n16w4"]["loop_instrs"], rows


@pytest.fixture
def aot_check():
    """The tool as a module, loaded by path, with TRITON_INTERPRET put back: the tool
    drops it from the environment on import, which would leave the rest of this
    test process compiling kernels for a GPU it does not have."""
    saved = os.environ.get("TRITON_INTERPRET")
    try:
        spec = importlib.util.spec_from_file_location("aot_check_under_test", TOOL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    yield module
    assert os.environ.get("TRITON_INTERPRET") == saved


def test_sass_loop_counts_the_outermost_loop(aot_check):
    """--sass: the instructions from the target of the longest backward branch to
    that branch (an inner loop counted once), tensor-core ones apart; the kernel's
    closing self-branch is no loop."""
    listing = "\n".join([
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;",
        "        /*0010*/                   S2R R0, SR_TID.X ;",
        "        /*0020*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;",     # before the loop
        "        /*0030*/                   LDG.E R2, desc[UR4][R2.64] ;",            # loop start
        "        /*0040*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;",
        "        /*0050*/                   FADD R4, R4, R2 ;",                       # inner loop start
        "        /*0060*/               @P1 BRA 0x50 ;",
        "        /*0070*/                   HGMMA.64x32x8.F32.TF32 R24, gdesc[UR8], R24 ;",
        "        /*0080*/              @!P0 BRA 0x30 ;",                               # loop end
        "        /*0090*/                   EXIT ;",
        "        /*00a0*/                   BRA 0xa0;",
    ])
    assert aot_check.sass_loop(listing) == (6, 2)
    assert aot_check.sass_loop(listing.replace("@!P0 BRA 0x30", "NOP").replace("@P1 BRA 0x50", "NOP")) is None
    # newer cuobjdump prints labels and branches to them
    labelled = listing.replace("@!P0 BRA 0x30", "@!P0 BRA `(.L_x_3)").replace(
        "        /*0030*/", ".L_x_3:\n        /*0030*/")
    assert aot_check.sass_loop(labelled) == (6, 2)


# The shape of Triton 3.6's TTGIR for the dense bank-contrast kernel when it carried
# the CSR bounds from tile to tile (trimmed): %e_lo_61 and %e_hi_64 load the first
# tile's bounds a second time, in the reduction's layout, and the counting loop's
# bound %0 computed from them is used inside the tile loop.
_HOISTED_TTGIR = """
    %e_lo_60 = tt.load %e_lo_58, %row_mask_23, %cst_9 : tensor<16x!tt.ptr<i32>, #slice> loc(#loc170)
    %e_lo_61 = tt.load %e_lo_59, %row_mask_24, %cst_8 : tensor<16x!tt.ptr<i32>, #blocked3> loc(#loc170)
    %e_hi_63 = tt.load %e_hi, %row_mask_23, %cst_9 : tensor<16x!tt.ptr<i32>, #slice> loc(#loc172)
    %e_hi_64 = tt.load %e_hi_62, %row_mask_24, %cst_8 : tensor<16x!tt.ptr<i32>, #blocked3> loc(#loc172)
    %n_e = arith.subi %e_hi_64, %e_lo_61 : tensor<16xi32, #blocked3> loc(#loc180)
    %0 = "tt.reduce"(%n_e) <{axis = 0 : i32}> ({
    }) : (tensor<16xi32, #blocked3>) -> i32 loc(#loc181)
    %r:2 = scf.for %t = %lo to %hi step %c1_i32 iter_args(%e_lo_88 = %e_lo_60, %e_hi_89 = %e_hi_63) -> (tensor<16xi32, #slice>, tensor<16xi32, #slice>)  : i32 {
      %e_next_93 = tt.load %e_next_92, %row_mask_23, %cst_9 : tensor<16x!tt.ptr<i32>, #slice> loc(#loc193)
      %n_e_121 = arith.subi %e_hi_89, %e_lo_88 : tensor<16xi32, #slice> loc(#loc180)
      %cnt_127 = scf.for %e0 = %c0_i32 to %0 step %c8_i32 iter_args(%cnt_165 = %cst_3) -> (tensor<16x32xi32, #blocked>)  : i32 {
        scf.yield %cnt_165 : tensor<16x32xi32, #blocked> loc(#loc82)
      } loc(#loc208)
      scf.yield %e_hi_89, %e_next_93 : tensor<16xi32, #slice>, tensor<16xi32, #slice> loc(#loc107)
    } loc(#loc189)
"""


def test_hoisted_loop_values_finds_the_dense_kernel_miscompile(aot_check):
    """The TTGIR check flags a loop that uses a value computed before it from a copy
    of a loop-carried value's initial load, and passes the same loop once the bound
    is computed in the loop (what Triton 3.9 emits, and the fixed kernel)."""
    found = aot_check.hoisted_loop_values(_HOISTED_TTGIR)
    assert len(found) == 2 and all("%0" in f for f in found)
    assert "%e_lo_61" in found[0] and "%e_lo_60" in found[0]
    fixed = _HOISTED_TTGIR.replace("to %0 step", "to %9 step").replace(
        "      %cnt_127", "      %9 = arith.maxsi %n_e_121, %n_e_121 : i32 loc(#loc181)\n      %cnt_127")
    assert aot_check.hoisted_loop_values(fixed) == []
    assert aot_check.hoisted_loop_values("") == []


_BARRIER_BEFORE_LAST_STORE = r"""
import re, sys
sys.path.insert(0, "tools")
import aot_check
variant = next(v for v in aot_check.load_variants("fifo_enqueue") if v["name"] == "fifo_enqueue_d128_fp32_fp32")
lines = aot_check.compile_variant(variant, 90).asm["ptx"].splitlines()
barriers = [i for i, line in enumerate(lines) if re.search(r"\b(bar|barrier)\.sync\b", line)]
stores = [i for i, line in enumerate(lines) if re.search(r"\bst\.global", line)]
print(max(barriers, default=-1), max(stores))
"""


def test_fifo_enqueue_stores_the_pointer_behind_a_barrier(tmp_path):
    """The FIFO kernel's warps all read the pointer before any stores the moved one: a
    barrier sits before the pointer's store, the kernel's last. At d = 128 its tile loop
    has none of its own (no layout change through shared memory), which left a warp
    running late free to place its rows from the new pointer."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _BARRIER_BEFORE_LAST_STORE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last_barrier, last_store = map(int, proc.stdout.splitlines()[-1].split())   # after the compile's log
    assert 0 <= last_barrier < last_store


# A 16-row RRD tile loop's TTGIR (trimmed): the queue tile loaded in the loop
# (synchronously), a reduction region inside the loop before it, and a staged load.
_LOOP_LOADS_TTGIR = """
    %q = tt.load %q_at, %q_mask : tensor<32x128x!tt.ptr<f32>, #blocked> loc(#loc1)
    %r:3 = scf.for %n0 = %start to %stop step %c16_i32 iter_args(%m = %cst, %l = %cst_0, %acc = %cst_1) -> (tensor<32xf32, #slice>, tensor<32xf32, #slice>, tensor<32x128xf32, #mma>)  : i32 {
      %mx = "tt.reduce"(%x) <{axis = 1 : i32}> ({
      ^bb0(%a: f32 loc(unknown), %b: f32 loc(unknown)):
        %mm = arith.maxnumf %a, %b : f32 loc(#loc2)
        tt.reduce.return %mm : f32 loc(#loc2)
      }) : (tensor<32x16xf32, #mma>) -> tensor<32xf32, #slice> loc(#loc2)
      %bank = tt.load %tile_at, %tile_mask, %cst_6 : tensor<16x128x!tt.ptr<f32>, #blocked> loc(#loc3)
      %words = ttg.async_copy_global_to_local %w_at, %w_buf mask %w_mask : tensor<16x32x!tt.ptr<i32>, #blocked1> -> <16x32xi32, #shared1, #smem, mutable> loc(#loc4)
      %s = tt.load %scalar_at : !tt.ptr<f32> loc(#loc5)
      scf.if %flag {
        %t = tt.load %t_at : tensor<16x!tt.ptr<f32>, #blocked2> loc(#loc6)
      } else {
        %u = tt.load %u_at : tensor<16x!tt.ptr<f32>, #blocked2> loc(#loc7)
      } loc(#loc8)
      scf.yield %m, %l, %acc : tensor<32xf32, #slice>, tensor<32xf32, #slice>, tensor<32x128xf32, #mma> loc(#loc9)
    } loc(#loc10)
    %after = tt.load %after_at : tensor<32x!tt.ptr<f32>, #blocked2> loc(#loc11)
"""


def test_loop_sync_loads_counts_tensor_loads_left_in_loops(aot_check):
    """The tile load after a reduction region, and both branches' loads, count; the
    async copy, the scalar load and the loads before and after the loop do not."""
    assert aot_check.loop_sync_loads(_LOOP_LOADS_TTGIR) == 3
    staged = _LOOP_LOADS_TTGIR.replace("%bank = tt.load", "%bank = ttg.local_load")
    assert aot_check.loop_sync_loads(staged) == 2
    assert aot_check.loop_sync_loads("") == 0
