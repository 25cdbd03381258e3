"""Which fitted constants and runtime flags does no fast test guard? Change each by +25 % (flags: flip), run the guards.

    python benchmarks/mutation.py [--tests FILE ...] [--only PATH:LINE] [--workers N] [--json OUT]

Mutants: every non-zero number literal in src/modelmem/memory/*.py (formulas' coefficients and the named fitted
constants of memory/fitted.py alike), and every number and True/False in src/modelmem/runtimes/profiles.py (the
runtimes' habit flags). A float becomes x × 1.25; an int round(x × 1.25), or x + 1 where that rounds back to x; a
flag flips. Each mutant runs the guard tests in a fresh process on a copy of src/; a mutant "survives" when they all
still pass. Guards: tests/test_measured.py (published measurements), tests/test_first_principles*.py, the
trace-grid pin tests (tests/test_trace_pin*.py, tests/test_trace_grid*.py) and the runtimes' tests (vLLM, llama.cpp
and Ollama figures from their logs), whichever exist.

Prints every survivor (file:line, the literal, the line) and the count; exit code 1 if any survive.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
GUARD_GLOBS = ("tests/test_first_principles*.py", "tests/test_measured.py", "tests/test_trace_pin*.py", "tests/test_trace_grid*.py",
               # the runtimes' own tests pin vLLM's, llama.cpp's and Ollama's figures from their logs
               "tests/test_runtimes.py", "tests/test_serving*.py", "tests/test_plan_llamacpp.py",
               # issue 8's wrong numbers, each against a value worked out by hand
               "tests/test_wrong_numbers.py")
FACTOR = 1.25


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to src/
    line: int
    col: int
    end_col: int
    original: str
    mutated: str
    context: str  # the source line
    before: str = ""  # the line's text just before the literal

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def targets() -> list[Path]:
    files = sorted(p for p in (SRC / "modelmem" / "memory").glob("*.py") if p.name != "__init__.py")
    profiles = SRC / "modelmem" / "runtimes" / "profiles.py"
    return files + ([profiles] if profiles.exists() else [])


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def mutate_value(value: object) -> object | None:
    """The +25 % (or flipped) value, or None for a literal that is not mutated (zero, strings, None)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        if value == 0:
            return None
        new = round(value * FACTOR)
        return new if new != value else value + 1
    if isinstance(value, float):
        return None if value == 0 else value * FACTOR
    return None


def find_mutants(path: Path) -> list[Mutant]:
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    skip = _docstring_ids(tree)
    is_profiles = path.name == "profiles.py"
    # in the profiles, flags are the record fields' defaults and the values the records give them; decorator
    # arguments (dataclass(frozen=True)) and the like are not runtime habits
    flags: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            flags |= {id(st.value) for st in node.body if isinstance(st, ast.AnnAssign) and st.value is not None}
        elif isinstance(node, ast.Call) and (
                # a record's constructor; dict(...) of flags several records share; replace(record, …) of a variant
                isinstance(node.func, ast.Name) and (node.func.id[:1].isupper() or node.func.id in ("dict", "replace"))
                or isinstance(node.func, ast.Attribute) and node.func.attr == "replace"):
            if not any(node in getattr(d, "decorator_list", ()) for d in ast.walk(tree)):
                flags |= {id(k.value) for k in node.keywords}
    # max(1, n) / min(1, n) guard a division or a count; they are not fitted numbers
    guards = {id(a) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("max", "min") for a in node.args if isinstance(a, ast.Constant) and a.value in (0, 1)}
    # sum(1 for … if …) counts; the 1 is not a number anyone fitted
    guards |= {id(node.args[0].elt) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id == "sum" and node.args and isinstance(node.args[0], ast.GeneratorExp)
               and isinstance(node.args[0].elt, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if id(node) in guards:
            continue
        if not isinstance(node, ast.Constant) or id(node) in skip or node.lineno != node.end_lineno:
            continue
        if isinstance(node.value, bool) and (not is_profiles or id(node) not in flags):
            continue  # flags live in the runtime profiles; elsewhere a bool literal is logic, not a fitted habit
        new = mutate_value(node.value)
        if new is None:
            continue
        line = lines[node.lineno - 1].encode()  # ast offsets count UTF-8 bytes, not characters
        original = line[node.col_offset:node.end_col_offset].decode()
        out.append(Mutant(str(path.relative_to(SRC)), node.lineno, node.col_offset, node.end_col_offset, original,
                          repr(new), line.decode().strip(), line[max(0, node.col_offset - 24):node.col_offset].decode(errors="replace")))
    return sorted(out, key=lambda m: (m.path, m.line, m.col))


# Survivors no test can kill because the +25 % value behaves exactly like the original for every input the code
# can see (an equivalent mutant), keyed by the source line's text and the literal; each says why.
# Key: (the source line's start, the text just before the literal, the literal).
EQUIVALENT = {
    ("lora_dropout=0.05, lora_fused_qkv=True", "lora_dropout=", "0.05"):
        "only p > 0 is read: the saved dropout output and mask do not depend on p",
    ("keeps_previous_step_graph: bool = False", "bool = ", "False"):
        "read only together with bitsandbytes < 0.43.2, and the one profile on such a version (LitGPT 0.4) sets it",
    ("return bool(self.bitsandbytes) and _version_tuple(self.bitsandbytes) < (0, 43, 2)", "(0, 43, ", "2"):
        "no profile names a bitsandbytes version between 0.43.2 and 0.43.3",
    ("lora_fused_qkv: bool = False", "bool = ", "False"):
        "read only where LoRA dropout is on, and every profile with dropout (LitGPT's) sets the flag itself",
    ("_VLLM_HABITS: dict[str, Any] = dict(", "falls_back_to_eager=", "False"):
        "vLLM's memory comes from runtimes/vllm.py (its own profile-run peak), which never reads the attention fallback",
    ("_LLAMACPP_HABITS: dict[str, Any] = dict(", "falls_back_to_eager=", "False"):
        "llama.cpp's and Ollama's memory comes from runtimes/llamacpp.py (ggml compute buffers), which never reads it",
    ("total += sum(c * s.h for saved in norm_out_saved[: max(1, min(2, n_norms))]", "min(", "2"):
        "norm_out_saved has two entries: slicing it to 3 is slicing it to 2",
    ("gpu_layer_split=False, runs_transformers_models=False,", "runs_transformers_models=", "False"):
        "vLLM's memory comes from runtimes/vllm.py, which never reads transformers' layout facts",
    ("sliding_cache_keeps_prompt=False)", "sliding_cache_keeps_prompt=", "False"):
        "the serving engines' memory comes from runtimes/vllm.py and runtimes/llamacpp.py, which never read it",
    ("gpu_layer_split=True, caches_mla_latent=False, runs_transformers_models=False,", "caches_mla_latent=", "False"):
        "llama.cpp's and Ollama's memory comes from runtimes/llamacpp.py (GGUF shapes), which never reads it",
    ("gpu_layer_split=True, caches_mla_latent=False, runs_transformers_models=False,", "runs_transformers_models=",
     "False"): "llama.cpp's and Ollama's memory comes from runtimes/llamacpp.py, which never reads it",
    ("sliding_cache_keeps_prompt=False,  # unread: its KV cache is preallocated", "sliding_cache_keeps_prompt=", "False"):
        "read only where the KV cache is not preallocated, and LitGPT's, torchao's and torchtune's are (preallocates_kv)",
    ("if len(_LOOKED_UP) < 256:", "< ", "256"): "the size of a lookup memo never changes a result",
    # activations.offloaded_layer_inputs_at_loss: once the final norm's packs reach the stash's five ids, every layer
    # input is released (max(0, 5 - after) is 0); more packs release nothing more
    ("after += 2  # the weight, then the normed tensor", "after += ", "2"):
        "a trained RMSNorm's 6 packs already leave no layer input in the 5-id stash; 7 leave none either",
    ("after += 1  # Gemma's", "after += ", "1"):
        "Gemma's frozen RMSNorm's 5 packs already leave no layer input in the 5-id stash; 6 leave none either",
    ("after = 5 if FP32_BYTES * job.batch_size", "after = ", "5"):
        "LayerNorm's 5 packs already leave no layer input in the 5-id stash; 6 leave none either",
}


def equivalent_reason(m: Mutant) -> str | None:
    for (line, before, literal), why in EQUIVALENT.items():
        if m.context.startswith(line) and m.before.endswith(before[-24:]) and m.original == literal:
            return why
    return None


def guard_tests(given: list[str]) -> list[str]:
    if given:
        return given
    found = []
    for pattern in GUARD_GLOBS:
        found += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
    return found


def _run_guards(repo: Path, tests: list[str], timeout: float) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    # -x: the first failure decides; skips do not count as passing guards (a guard that cannot run guards nothing)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", "-rs", *tests]
    try:
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    last = (p.stdout.strip().splitlines() or ["?"])[-1]
    return p.returncode == 0 and "skipped" not in last, last


def run(mutants: list[Mutant], tests: list[str], workers: int, timeout: float) -> list[tuple[Mutant, bool, str]]:
    results: list[tuple[Mutant, bool, str]] = []
    copies = []
    for _ in range(workers):
        # A whole copy of the checkout (benchmarks/accuracy.py and the tests put their own src/ first on sys.path),
        # with ../shared beside it as the tests expect.
        d = Path(tempfile.mkdtemp(prefix="modelmem-mutation-")) / "repo"
        shutil.copytree(ROOT, d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".git", ".venv*", ".whl", ".pytest_cache", ".hypothesis"))
        if (ROOT.parent / "shared").exists():
            (d.parent / "shared").symlink_to(ROOT.parent / "shared")
        copies.append(d)
    try:
        ok, last = _run_guards(copies[0], tests, timeout)
        if not ok:
            raise SystemExit(f"mutation: the guard tests fail before any mutation ({last}); fix them first")
        free = list(copies)

        def one(m: Mutant) -> tuple[Mutant, bool, str]:
            d = free.pop()
            target = d / "src" / m.path
            original = target.read_bytes()
            try:
                lines = original.splitlines(keepends=True)
                line = lines[m.line - 1]
                lines[m.line - 1] = line[:m.col] + m.mutated.encode() + line[m.end_col:]
                target.write_bytes(b"".join(lines))
                survived, last = _run_guards(d, tests, timeout)
            finally:
                target.write_bytes(original)
                free.append(d)
            return m, survived, last

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, res in enumerate(pool.map(one, mutants)):
                results.append(res)
                m, survived, _ = res
                print(f"[{i + 1:>3}/{len(mutants)}] {'SURVIVED' if survived else 'killed  '} {m.where:<36} {m.original} -> {m.mutated}", flush=True)
    finally:
        for d in copies:
            shutil.rmtree(d.parent, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], allow_abbrev=False)
    parser.add_argument("--tests", nargs="*", default=[], help="guard test files (default: " + ", ".join(GUARD_GLOBS) + ")")
    parser.add_argument("--only", nargs="*", default=[], help="mutants at PATH:LINE only (PATH relative to src/)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per guard run")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", type=Path, help="write every mutant's outcome here")
    args = parser.parse_args(argv)
    mutants = [m for p in targets() for m in find_mutants(p)]
    if args.only:
        mutants = [m for m in mutants if m.where in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.where:<36} {m.original:>10} -> {m.mutated:<10} {m.context}")
        print(f"{len(mutants)} mutants")
        return 0
    tests = guard_tests(args.tests)
    print(f"mutation: {len(mutants)} mutants; guards: {' '.join(tests)}", flush=True)
    start = time.monotonic()
    results = run(mutants, tests, max(1, args.workers), args.timeout)
    survivors = [m for m, survived, _ in results if survived and equivalent_reason(m) is None]
    equivalent = [m for m, survived, _ in results if survived and equivalent_reason(m) is not None]
    print()
    for m in equivalent:
        print(f"equivalent {m.where:<34} {m.original} -> {m.mutated}   {equivalent_reason(m)}")
    for m in survivors:
        print(f"survivor {m.where:<36} {m.original} -> {m.mutated}   {m.context}")
    print(f"mutation: {len(survivors)} of {len(results)} mutants survive the guard tests"
          f"{f' ({len(equivalent)} more are equivalent, listed above)' if equivalent else ''} ({time.monotonic() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(m), "survived": s, "last_line": last} for m, s, last in results], indent=1) + "\n")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
