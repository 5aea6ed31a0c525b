"""The README's examples run, and every command line the docs and the GPU script
give parses.

A renamed argument or option breaks a user's first copy-paste, or spends a
scarce GPU session on a usage error (``tools/gpu_session.sh``), while the rest
of the suite stays green. Here each ```python block of the README runs as
written, on small inputs defined below, and each ``python -m <module> ...``
command of the READMEs and the GPU script goes through its module's own parser.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

import rdkernels

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
GPU_SCRIPT = ROOT / "tools" / "gpu_session.sh"


def _fenced_blocks(text: str, *languages: str) -> list[str]:
    """The bodies of the fenced code blocks whose info string is one of ``languages``."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                if language in languages:
                    blocks.append("\n".join(body) + "\n")
                language = None
        elif language is not None:
            body.append(line)
    return blocks


# --- the README's Python examples -------------------------------------------------

def _crd_inputs(B=4, dim=256, n_data=50_000, k=16384):
    idx = torch.randint(0, n_data, (B,))
    contrast_idx = torch.cat([idx[:, None], torch.randint(0, n_data, (B, k))], dim=1)
    return dict(f_s=torch.randn(B, dim), f_t=torch.randn(B, dim), idx=idx, contrast_idx=contrast_idx)


def _bank_op_inputs(B=8, d=32, N=1000, K=64):
    idx = torch.randint(0, N, (B, K + 1))
    return dict(q=torch.nn.functional.normalize(torch.randn(B, d), dim=1).requires_grad_(),
                bank=torch.nn.functional.normalize(torch.randn(N, d), dim=1), idx=idx, N=N,
                index=idx[:, 0].clone(), values=torch.randn(B, d), n_data=N, dim=d)


def _sinkhorn_and_wcord_inputs(P=3, n=5, m=7):
    a = torch.rand(P, n) + 0.1
    b = torch.rand(P, m) + 0.1
    return dict(cost=(4 * torch.rand(P, n, m)).requires_grad_(), a=a / a.sum(1, keepdim=True),
                b=b / b.sum(1, keepdim=True), ce=torch.tensor(2.3), **_crd_inputs(k=0))


def _dcd_rrd_kd_inputs(B=4, dim=256, d=128, N=256):
    return dict(s_dim=dim, t_dim=dim, n_data=50_000, f_s=torch.randn(B, dim), f_t=torch.randn(B, dim),
                ce=torch.tensor(2.3), logits_s=torch.randn(B, 100), logits_t=torch.randn(B, 100),
                q_s=torch.randn(B, d, requires_grad=True), q_t=torch.randn(B, d), queue=torch.randn(N, d),
                z_s=torch.randn(B, d, requires_grad=True), z_t=torch.randn(B, d),
                tau=torch.tensor(1.0, requires_grad=True), bias=torch.tensor(0.0, requires_grad=True))


# The README's ```python blocks in order, each with the names it uses but does not define.
README_BLOCK_INPUTS = [_crd_inputs, _bank_op_inputs, _sinkhorn_and_wcord_inputs, _dcd_rrd_kd_inputs]


def _readme_python_blocks() -> list[str]:
    return _fenced_blocks((ROOT / "README.md").read_text(), "python")


def test_every_readme_python_block_has_inputs_here():
    assert len(_readme_python_blocks()) == len(README_BLOCK_INPUTS), (
        "README.md's ```python blocks changed in number: give each one its inputs in README_BLOCK_INPUTS")


@pytest.mark.parametrize("block", range(len(README_BLOCK_INPUTS)))
def test_readme_python_block_runs(block):
    code = _readme_python_blocks()[block]
    namespace = {"torch": torch, "rdkernels": rdkernels, **README_BLOCK_INPUTS[block]()}
    exec(compile(code, f"README.md python block {block + 1}", "exec"), namespace)
    for name in ("loss", "loss_rows", "s", "z"):
        value = namespace.get(name)
        if isinstance(value, torch.Tensor):
            assert torch.isfinite(value).all(), f"block {block + 1}: {name} is not finite"


# --- command lines --------------------------------------------------------------------

def _parsers() -> dict:
    """Module run by ``python -m`` -> a function that parses its argv (SystemExit on a usage error)."""
    from benchmarks import __main__ as bench_main
    from benchmarks import fit_cost_model, host, overhead, profile, splits, targets
    from rdkernels import __main__ as env_report
    from rdkernels.harness import __main__ as harness_main

    return {"rdkernels": env_report.parse_args,
            "rdkernels.harness": lambda argv: harness_main._build_parser()[0].parse_args(argv),
            "benchmarks": bench_main.parse_args, "benchmarks.targets": targets.parse_args,
            "benchmarks.overhead": overhead.parse_args, "benchmarks.profile": profile.parse_args,
            "benchmarks.host": host.parse_args, "benchmarks.fit_cost_model": fit_cost_model.parse_args,
            "benchmarks.splits": splits.parse_args}


def _shell_lines(script: str) -> list[str]:
    """Logical lines of shell text: continuations joined, comments and redirections cut."""
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        line = re.split(r"\s#\s|^\s*#", line)[0]
        line = re.split(r"\s(?:\d?>|\||\|\||&&)\s?", line)[0]  # up to a redirection, pipe or chain
        if line.strip():
            lines.append(line.strip())
    return lines


def _doc_commands() -> list[tuple[str, str]]:
    """(where, command) for each ``python -m`` command of the READMEs: shell blocks and inline code."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in _fenced_blocks(text, "bash", ""):
            found += [(doc.name, line) for line in _shell_lines(block)]
        found += [(doc.name, span) for span in re.findall(r"`(python -m [^`]+)`", text)]
        # the targets table says how to measure each target: "run: python -m ... (POT installed)"
        found += [(doc.name, cmd) for cmd in re.findall(r"run: (python -m [^|(]+)", text)]
    return found


def _gpu_script_commands() -> list[tuple[str, str]]:
    """The GPU script's ``python -m`` commands, its shell variables given values of the kind they take."""
    script = GPU_SCRIPT.read_text()
    common = re.search(r"local common=\((.*?)\)", script).group(1)
    values = {'"${common[@]}"': common, '"$dir/': '"results/', '"$LOGS/': '"logs/', "$dir": "results"}
    loops = {var: [w for w in words.split() if w != "\\"]   # a continued line's backslash is no value
             for var, words in re.findall(r"for (\w+) in ([^;]+); do", script)}
    found = []
    for line in _shell_lines(script):
        for var, value in values.items():
            line = line.replace(var, value)
        lines = [line]
        for var, words in loops.items():  # a loop's command once per value the loop takes
            # "$var" (a word of its own), or $var / ${var} inside a word
            use = re.compile(rf'"\${var}"|\$\{{?{var}\b\}}?')
            lines = [use.sub(lambda _, w=w: w, ln) for ln in lines for w in words] if use.search(line) else lines
        found += [(GPU_SCRIPT.name, ln) for ln in lines]
    return found


def _module_commands(commands) -> list[tuple[str, str, list[str]]]:
    parsers = _parsers()
    out = []
    for where, line in commands:
        if "python -m" not in line:
            continue
        words = shlex.split(line)
        for i in range(len(words) - 2):
            module = words[i + 2]
            if words[i] != "python" or words[i + 1] != "-m":
                continue
            if module.split(".")[0] in ("rdkernels", "benchmarks"):  # ours: a misspelt one is an error
                assert module in parsers, f"{where}: no parser here for python -m {module}: {line}"
            if module in parsers:
                argv = words[i + 3:]
                assert not any("$" in w for w in argv), f"{where}: give this shell variable a value here: {line}"
                out.append((where, module, argv))
    return out


def test_the_docs_and_the_gpu_script_have_commands_to_check():
    # guards the extraction itself: a broken pattern would leave the test below nothing to check
    docs = _module_commands(_doc_commands())
    script = _module_commands(_gpu_script_commands())
    assert {m for _, m, _ in docs} >= {"rdkernels", "rdkernels.harness", "benchmarks", "benchmarks.targets",
                                       "benchmarks.overhead"}
    assert {m for _, m, _ in script} == {"rdkernels", "rdkernels.harness", "benchmarks", "benchmarks.targets",
                                         "benchmarks.overhead", "benchmarks.profile", "benchmarks.fit_cost_model",
                                         "benchmarks.splits"}
    # each loop's command once per value: 4 distillers x (eager, graphs) + bf16 graphs; 2 presets
    assert sum(m == "rdkernels.harness" for _, m, _ in script) == 9
    assert {a[a.index("--preset") + 1] for _, m, a in script if m == "benchmarks" and "--preset" in a} \
        == {"cifar", "imagenet"}


@pytest.mark.parametrize("source", ["docs", "gpu_script"])
def test_every_command_line_parses(source, capsys):
    commands = _doc_commands() if source == "docs" else _gpu_script_commands()
    parsers = _parsers()
    failures = []
    for where, module, argv in _module_commands(commands):
        try:
            parsers[module](argv)
        except SystemExit as exc:
            if exc.code:  # --help and --list style exits are fine; usage errors are not
                lines = capsys.readouterr().err.strip().splitlines()
                # the error line (the harness's parsers end with a pointer to --help after it)
                error = [line for line in lines if "error:" in line] or lines or [f"exit status {exc.code}"]
                failures.append(f"{where}: python -m {module} {shlex.join(argv)}\n    {error[-1]}")
    assert not failures, "command lines that their parsers refuse:\n" + "\n".join(failures)


def test_the_extras_the_readme_names_exist():
    metadata = pytest.importorskip("importlib.metadata")
    try:
        extras = set(metadata.metadata("rdkernels").get_all("Provides-Extra") or ())
    except metadata.PackageNotFoundError:
        pytest.skip("rdkernels is not installed (its metadata lists the extras)")
    named = set()
    for doc in DOCS:
        for group in re.findall(r"pip install -e \.\[([\w,-]+)\]", doc.read_text()):
            named |= set(group.split(","))
    assert named, "no `pip install -e .[extra]` found in the READMEs"
    assert named <= extras, f"README names extras the package lacks: {sorted(named - extras)}"
