"""GPU-readiness check that runs on CPU: compile every Triton kernel of rklu.kernels for sm_80 (A100) and
sm_90 (H100) with every config it can be launched with, and record registers, spills and shared memory.

Each Triton module exposes ``compile_specs()`` (rklu/kernels/common/compile_spec.py) over its launch matrix (dtype bf16 /
fp32 x direction x augmented teacher x bias, plus kernel-specific flags); every spec is compiled with each of
its configs through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32))`` -- Triton lowers
to PTX and runs the wheel's ptxas without a GPU -- then the wheel's ``cuobjdump --dump-resource-usage``
reads REG / STACK / LOCAL from the cubin and ``kernel.metadata.shared`` gives the dynamic shared memory.
Pointers and the integer arguments a real launch passes as multiples of 16 get ``tt.divisibility=16``
(``CompileSpec.divisible``), as Triton's launcher specializes them.

A row is a problem when the kernel spills (STACK or LOCAL > 0), needs more shared memory than the
architecture gives one block (sm_80: 166912 bytes, sm_90: 232448), or more registers than a block can hold
(registers x threads > 65536). Every config in a kernel's list must pass on both architectures.

    python benchmarks/gpu_compile.py                    # full matrix -> benchmarks/results/gpu-compile.{json,md}
    python benchmarks/gpu_compile.py --modules rklu.kernels.kl.triton_chunked   # recompile one module, merge
    python benchmarks/gpu_compile.py --subset ci --out /tmp/x --check     # what tests/kernels/test_gpu_compile.py runs
    python benchmarks/gpu_compile.py --verify           # committed JSON covers the current sources, no problem

The committed JSON stores, per row, a hash of the module's kernel sources (the module file and the
``rklu/kernels/`` files it imports, plus the Triton version): ``--verify`` fails when a kernel changed since.
Runs with TRITON_INTERPRET unset (it re-executes itself without it: the interpreter replaces @triton.jit).
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_PREFIX = RESULTS / "gpu-compile"

# Every Triton module of the library; optional ones (added by other branches) are compiled when present.
MODULES = ("rklu.kernels.kl.triton_fused", "rklu.kernels.kl.triton_chunked", "rklu.kernels.logprob.triton_fused")
OPTIONAL = {"rklu.kernels.logprob.triton_fused"}

ARCHS = {"sm_80": 80, "sm_90": 90}
# Largest dynamic shared memory one block may opt into (CUDA occupancy tables: A100 163 KiB, H100 227 KiB).
SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448}
REGISTER_FILE = 65536  # 32-bit registers per SM and per block, both architectures
MAX_REGISTERS = 255
# CI subset: the variant with the most live tiles (reverse KL, augmented teacher, biases), every config of
# bf16, the first (default) config of fp32, both architectures (see jobs_for).
WORST_VARIANT = "reverse,aug,bias"


def _no_interpreter():
    """Re-exec without TRITON_INTERPRET: under it @triton.jit returns interpreter objects, not compilable."""
    if os.environ.get("TRITON_INTERPRET"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def available_modules(names=MODULES) -> list[str]:
    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name in OPTIONAL and e.name == name:
                continue
            raise
        out.append(name)
    return out


def _module_files(name: str) -> list[Path]:
    """The module's file and, recursively, the files of the modules it imports relatively (its kernel sources)."""
    seen, todo = set(), [name]
    while todo:
        mod_name = todo.pop()
        try:
            spec = importlib.util.find_spec(mod_name)
        except (ModuleNotFoundError, ValueError):  # an imported name that is not a module
            continue
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin).resolve()
        if path in seen:
            continue
        seen.add(path)
        package = mod_name if path.name == "__init__.py" else mod_name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                todo += [base] if node.module else [f"{base}.{a.name}" for a in node.names]
    return sorted(seen)


def source_hash(name: str) -> str:
    import triton

    h = hashlib.sha256(f"triton {triton.__version__}\n".encode())
    for path in _module_files(name):
        h.update(path.name.encode() + b"\n" + path.read_bytes())
    return h.hexdigest()[:16]


def specs_of(name: str) -> list:
    return list(importlib.import_module(name).compile_specs())


def config_name(cfg) -> str:
    tiles = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    cap = f",maxnreg={cfg.maxnreg}" if getattr(cfg, "maxnreg", None) else ""
    return f"{tiles},warps={cfg.num_warps},stages={cfg.num_stages}{cap}"


def jobs_for(modules, archs, subset) -> list[tuple]:
    """(module, spec index, config index, arch) to compile. ``ci``: per kernel and dtype the first spec whose
    variant starts with WORST_VARIANT (kernels list their heaviest flags first), every bf16 config and the
    first fp32 one."""
    out = []
    for name in modules:
        taken = set()
        for si, spec in enumerate(specs_of(name)):
            if subset == "ci":
                worst = spec.variant == WORST_VARIANT or spec.variant.startswith(WORST_VARIANT + ",")
                if not worst or (spec.kernel, spec.dtype) in taken:
                    continue
                taken.add((spec.kernel, spec.dtype))
            for ci, _ in enumerate(spec.configs):
                if subset == "all" or spec.dtype == "bf16" or ci == 0:
                    out += [(name, si, ci, arch) for arch in archs]
    return out


_CUOBJDUMP = None
_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cuobjdump() -> str:
    global _CUOBJDUMP
    if _CUOBJDUMP is None:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: this Triton wheel ships no cuobjdump")
        _CUOBJDUMP = str(path)
    return _CUOBJDUMP


def resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    m = _RESOURCE.search(out)
    if m is None:
        raise RuntimeError(f"no resource line in cuobjdump output:\n{out}")
    reg, stack, static_shared, local = (int(x) for x in m.groups())
    return dict(registers=reg, stack_bytes=stack, static_shared_bytes=static_shared, local_bytes=local)


def compile_one(job) -> dict:
    """Compile one (module, spec index, config index, arch) and measure it."""
    import triton
    from triton.backends.compiler import GPUTarget

    name, si, ci, arch = job
    spec = specs_of(name)[si]
    cfg = spec.configs[ci]
    fn = spec.fn
    names = fn.arg_names
    missing = [a for a in names if a not in spec.signature]
    if missing:
        raise ValueError(f"{spec.kernel}: signature lacks {missing}")
    constexprs = {**spec.constexprs, **cfg.kwargs}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in spec.divisible if a in names}
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if getattr(cfg, "maxnreg", None):
        options["maxnreg"] = cfg.maxnreg
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kernel = triton.compile(triton.compiler.ASTSource(fn, spec.signature, constexprs, attrs),
                                target=GPUTarget("cuda", ARCHS[arch], 32), options=options)
    row = dict(module=name, kernel=spec.kernel, arch=arch, dtype=spec.dtype, variant=spec.variant,
               config=config_name(cfg), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    row.update(resource_usage(kernel.asm["cubin"]))
    row["shared_bytes"] = int(kernel.metadata.shared)
    row["shared_limit"] = SHARED_LIMIT[arch]
    threads = 32 * cfg.num_warps
    row["launchable"] = row["shared_bytes"] <= SHARED_LIMIT[arch] and row["registers"] * threads <= REGISTER_FILE
    row["compile_s"] = round(time.time() - t0, 2)
    return row


def problems(row: dict) -> list[str]:
    """Why a row fails the readiness check (empty: spill-free and launchable)."""
    out = []
    if row["stack_bytes"] > 0 or row.get("local_bytes", 0) > 0:
        out.append(f"spills (STACK {row['stack_bytes']} B, LOCAL {row.get('local_bytes', 0)} B)")
    if row["shared_bytes"] > SHARED_LIMIT[row["arch"]]:
        out.append(f"needs {row['shared_bytes']} B shared memory > {SHARED_LIMIT[row['arch']]} B on {row['arch']}")
    if row["registers"] > MAX_REGISTERS or row["registers"] * 32 * row["num_warps"] > REGISTER_FILE:
        out.append(f"{row['registers']} registers x {32 * row['num_warps']} threads exceed the register file")
    return out


def _key(row) -> tuple:
    return (row["module"], row["kernel"], row["dtype"], row["variant"], row["config"], row["arch"])


def run(modules, archs, subset, jobs: int, progress: bool = True) -> list[dict]:
    work = jobs_for(modules, archs, subset)
    hashes = {m: source_hash(m) for m in modules}
    rows, t0 = [], time.time()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(work), desc="compile", disable=not progress) if tqdm else None
    if jobs > 1:
        with cf.ProcessPoolExecutor(jobs) as pool:
            for row in pool.map(compile_one, work, chunksize=1):
                rows.append(row)
                bar and bar.update()
    else:
        for job in work:
            rows.append(compile_one(job))
            bar and bar.update()
    bar and bar.close()
    import triton

    for row in rows:
        row["source_sha256"] = hashes[row["module"]]
        row["triton"] = triton.__version__
    if progress:
        print(f"{len(rows)} compiles in {time.time() - t0:.0f} s", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    """Per kernel x config x arch: the worst registers / stack / shared over the variants, and any problem."""
    import triton

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["module"], r["kernel"], r["dtype"], r["config"], r["arch"]), []).append(r)
    bad = [r for r in rows if problems(r)]
    out = [f"# GPU compile check (sm_80 / sm_90), Triton {triton.__version__}", "",
           "Generated by `benchmarks/gpu_compile.py` on CPU (no GPU needed): every kernel x variant x config "
           "compiled for both targets; registers / stack (spills) from `cuobjdump --dump-resource-usage`, "
           "shared memory from the compiled kernel's metadata. One line per kernel, dtype, config and "
           "architecture: the worst value over its variants (direction, augmented teacher, bias and the "
           "kernel's own flags). Limits: shared memory per block sm_80 166912 B, sm_90 232448 B; "
           "registers x threads <= 65536; no spills.", "",
           f"**{len(rows)} compiles, {len(bad)} problem(s).**", "",
           "| kernel | dtype | config | arch | variants | max registers | max stack B | max shared B | status |",
           "|---|---|---|---|---:|---:|---:|---:|---|"]
    for (module, kernel, dtype, cfg, arch), rs in sorted(groups.items()):
        worst = max(rs, key=lambda r: r["registers"])
        status = "ok" if not any(problems(r) for r in rs) else \
            "; ".join(sorted({p for r in rs for p in problems(r)}))
        out.append(f"| {kernel} | {dtype} | {cfg} | {arch} | {len(rs)} | {worst['registers']} "
                   f"({worst['variant']}) | {max(r['stack_bytes'] for r in rs)} | "
                   f"{max(r['shared_bytes'] for r in rs)} | {status} |")
    if bad:
        out += ["", "Problems:", ""] + [f"- {r['kernel']} {r['dtype']} {r['variant']} {r['config']} {r['arch']}: "
                                        + "; ".join(problems(r)) for r in bad]
    hashes = sorted({(r["module"], r["source_sha256"]) for r in rows})
    out += ["", "Kernel source hashes: " + ", ".join(f"`{m}` {h}" for m, h in hashes)]
    return "\n".join(out) + "\n"


def write(rows: list[dict], prefix: Path) -> None:
    from rklu.io import atomic_write_text

    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    atomic_write_text(prefix.with_suffix(".md"), markdown(rows))


def verify(prefix: Path, modules) -> list[str]:
    """Why the committed results do not certify the current kernels (empty: they do)."""
    path = prefix.with_suffix(".json")
    if not path.exists():
        return [f"{path} missing: run python benchmarks/gpu_compile.py"]
    rows = json.loads(path.read_text())
    errors = []
    for name in modules:
        mine = [r for r in rows if r["module"] == name]
        current = source_hash(name)
        stale = {r["source_sha256"] for r in mine} - {current}
        if not mine or stale:
            errors.append(f"{name}: results {'missing' if not mine else 'from other sources ' + str(sorted(stale))} "
                          f"(current {current}); run python benchmarks/gpu_compile.py --modules {name}")
            continue
        expected = set()
        for spec in specs_of(name):
            for cfg in spec.configs:
                for arch in ARCHS:
                    expected.add((name, spec.kernel, spec.dtype, spec.variant, config_name(cfg), arch))
        have = {_key(r) for r in mine}
        if expected - have:
            errors.append(f"{name}: {len(expected - have)} case(s) not compiled, e.g. {sorted(expected - have)[0]}")
        if have - expected:
            errors.append(f"{name}: {len(have - expected)} stale case(s), e.g. {sorted(have - expected)[0]}")
    errors += [f"{_key(r)}: {'; '.join(problems(r))}" for r in rows if problems(r)]
    return errors


def main(argv=None) -> int:
    _no_interpreter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", help=f"comma-separated (default: every module present of {','.join(MODULES)})")
    p.add_argument("--arch", default="sm_80,sm_90")
    p.add_argument("--subset", choices=["all", "ci"], default="all",
                   help=f"ci: one variant {WORST_VARIANT!r}... per kernel, every bf16 config and the first fp32 one")
    p.add_argument("--jobs", type=int, default=1, help="compile processes (ptxas is single-threaded)")
    p.add_argument("--out", default=str(DEFAULT_PREFIX), help="output prefix (.json and .md)")
    p.add_argument("--check", action="store_true", help="exit 1 when any compiled case has a problem")
    p.add_argument("--verify", action="store_true", help="check the JSON at --out against the current sources")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    modules = available_modules(args.modules.split(",") if args.modules else MODULES)
    prefix = Path(args.out)
    if args.verify:
        errors = verify(prefix, modules)
        print("\n".join(errors) if errors else f"ok: {prefix.with_suffix('.json')} covers {', '.join(modules)}")
        return 1 if errors else 0
    archs = args.arch.split(",")
    rows = run(modules, archs, args.subset, args.jobs, progress=not args.quiet)
    old = prefix.with_suffix(".json")
    if args.modules and args.subset == "all" and old.exists():  # merge: replace only the recompiled modules
        rows = [r for r in json.loads(old.read_text()) if r["module"] not in modules] + rows
    write(rows, prefix)
    bad = [r for r in rows if problems(r)]
    print(f"wrote {prefix}.json / .md: {len(rows)} rows, {len(bad)} problem(s)")
    for r in bad:
        print("  ", _key(r), "; ".join(problems(r)))
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
