"""``rklu leaderboard``: every run in a demo folder as one seeded table, with the spread over seeds and a
test of which differences exceed it.

A demo folder (``rklu demo --out DIR``) collects runs from any number of ``rklu demo`` invocations that
share its original, retain-oracle and augmented models: different ``--methods``, more ``--seeds``, an
``--alphas`` sweep. ``results.md`` describes only the last invocation; this reads every finished run in
``DIR/runs`` (its ``config.json`` says method, seed and alpha; its ``metrics.json`` the per-epoch
evaluation) and writes, into the output folder:

* ``leaderboard.json``: per (method, alpha) the per-seed values at the peak epoch (the paper's protocol:
  the first epoch of highest seed-mean forget quality) and their mean and sample standard deviation;
* ``leaderboard.md``: the table (forget quality, model utility, forget ROUGE-L, privleak as mean ± sd)
  and, against the reference method, which differences exceed seed noise;
* ``fq_vs_mu.png`` (the FQ-MU plane, error bars = sd over seeds) and ``alpha_sweep.png`` when a method
  ran at two or more alphas.

"Exceeds seed noise" = Welch's two-sided t-test (``scipy.stats.ttest_ind(equal_var=False)``) over the
seeds at p < 0.05, on log10 forget quality (a p-value: its scale is logarithmic), model utility, forget
ROUGE-L and privleak. With 3 seeds per side only large, consistent differences pass; no correction for
the number of comparisons is made, so a single pass among many is weak evidence.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

METRICS = (("forget_quality", "forget quality"), ("model_utility", "model utility"),
           ("forget_rouge_l", "forget ROUGE-L"), ("privleak", "privleak"))
NOISE_P = 0.05
REFERENCE = ("rklu+kl", 8.0)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_runs(demo_dir: Path) -> list[dict]:
    """One record per finished run in ``demo_dir/runs``: method, seed, alpha (None for a method that does
    not read it), its per-epoch metrics and its training time."""
    from rklu.demo.settings import takes_alpha

    runs_dir = Path(demo_dir) / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"no runs folder in {demo_dir} (expected the --out folder of `rklu demo`)")
    runs = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
            status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unfinished run: not on the board
        if status.get("status") != "completed" or not metrics:
            continue
        method = config["method"]
        runs.append({"run": run_dir.name, "method": method, "seed": int(config.get("seed") or 0),
                     "alpha": float(config["alpha"]) if takes_alpha(method) else None,
                     "epochs": [m for m in metrics if m.get("forget_quality") is not None],
                     "time_s": status.get("time_s")})
    if not runs:
        raise ValueError(f"no finished runs in {runs_dir}")
    return runs


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if _finite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def group_runs(runs: Sequence[Mapping]) -> list[dict]:
    """Per (method, alpha): the peak epoch (the demo's rule, ``rklu.eval.report.summarize``: the first epoch
    of highest seed-mean forget quality) and, at it, each seed's metrics, their mean and sd."""
    from rklu.demo.report import record
    from rklu.eval.report import summarize

    records = [record(r["method"], r["seed"], r["alpha"], e["epoch"], e) for r in runs for e in r["epochs"]]
    groups = []
    for group in summarize(records)["groups"]:
        if group["peak"] is None:
            continue
        method, alpha, peak = group["method"], group["alpha"], group["peak"]["epoch"]
        at_peak = sorted(((r["seed"], e, r["time_s"]) for r in runs if (r["method"], r["alpha"]) == (method, alpha)
                          for e in r["epochs"] if e["epoch"] == peak), key=lambda item: item[0])
        per_seed = {str(seed): {key: e.get(key) for key, _ in METRICS} for seed, e, _ in at_peak}
        stats = {key: dict(zip(("mean", "sd"), _mean_sd([v[key] for v in per_seed.values()]))) for key, _ in METRICS}
        times = [time_s for _, _, time_s in at_peak if _finite(time_s)]
        groups.append({"method": method, "alpha": alpha, "label": group["label"],
                       "seeds": [seed for seed, _, _ in at_peak], "num_seeds": len(at_peak), "peak_epoch": peak,
                       "per_seed": per_seed, "stats": stats,
                       "seconds_per_run": sum(times) / len(times) if times else None})
    return groups


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's two-sided t-test p-value; None with fewer than 2 values a side or no spread at all."""
    from scipy import stats

    a, b = [v for v in a if _finite(v)], [v for v in b if _finite(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return 0.0 if a[0] != b[0] else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _values(group: Mapping, key: str) -> list[float]:
    vals = [seed[key] for seed in group["per_seed"].values()]
    if key == "forget_quality":  # a p-value: compared on its log scale (floored: a KS p-value can be 0)
        return [math.log10(max(v, 1e-300)) for v in vals if _finite(v)]
    return [v for v in vals if _finite(v)]


def compare(groups: Sequence[Mapping], reference: tuple[str, float | None]) -> list[dict]:
    """Each group against ``reference`` (method, alpha): Welch p-value and whether it exceeds seed noise,
    per metric."""
    ref = next((g for g in groups if (g["method"], g["alpha"]) == reference), None)
    if ref is None:
        return []
    out = []
    for g in groups:
        if g is ref:
            continue
        row = {"label": g["label"], "reference": ref["label"], "metrics": {}}
        for key, _ in METRICS:
            mine, theirs = _values(g, key), _values(ref, key)
            p = welch_p(mine, theirs)
            diff = (g["stats"][key]["mean"] - ref["stats"][key]["mean"]
                    if g["stats"][key]["mean"] is not None and ref["stats"][key]["mean"] is not None else None)
            row["metrics"][key] = {"difference": diff, "p": p, "exceeds_noise": p is not None and p < NOISE_P}
            if key == "forget_quality" and mine and theirs:  # log10 values: the ratio of geometric means
                row["metrics"][key]["geometric_ratio"] = 10 ** (sum(mine) / len(mine) - sum(theirs) / len(theirs))
        out.append(row)
    return out


def _fmt(value, digits=4) -> str:
    from rklu.eval.report import format_number

    return format_number(value, digits)


def _cell(stats: Mapping, digits=4) -> str:
    if stats["mean"] is None:
        return "n/a"
    return _fmt(stats["mean"], digits) + ("" if stats["sd"] is None else f" ± {_fmt(stats['sd'], digits)}")


def markdown(board: Mapping) -> str:
    base, oracle = board["original"], board["retain_oracle"]
    lines = ["| method | seeds | peak epoch | forget quality | model utility | forget ROUGE-L | privleak | s / run |",
             "|---|---|---|---|---|---|---|---|",
             f"| original (before unlearning) | – | 0 | {_fmt(base.get('forget_quality'))} | {_fmt(base.get('model_utility'))} | "
             f"{_fmt(base.get('forget_rouge_l'))} | {_fmt(base.get('privleak'), 2)} | – |",
             f"| retain oracle | – | – | 1 (by definition) | {_fmt(oracle.get('model_utility'))} | "
             f"{_fmt(oracle.get('forget_rouge_l'))} | {_fmt(oracle.get('privleak'), 2)} | – |"]
    for g in board["groups"]:
        s = g["stats"]
        lines.append(f"| {g['label']} | {g['num_seeds']} | {g['peak_epoch']} | {_cell(s['forget_quality'])} | "
                     f"{_cell(s['model_utility'])} | {_cell(s['forget_rouge_l'])} | {_cell(s['privleak'], 2)} | "
                     f"{'n/a' if g['seconds_per_run'] is None else round(g['seconds_per_run'])} |")
    lines += ["", f"Against {board['reference']} (Welch's t-test over seeds, p < {NOISE_P}; forget quality on its "
              "log10 scale). A cell gives the difference of means and the p-value; **bold** = exceeds seed noise.", "",
              "| method | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for row in board["comparisons"]:
        cells = []
        for key, _ in METRICS:
            m = row["metrics"][key]
            if m["difference"] is None:
                cells.append("n/a")
                continue
            if key == "forget_quality":  # the ratio of geometric means: forget quality lives on a log scale
                diff = f"×{m['geometric_ratio']:.3g}"
            else:
                diff = f"{m['difference']:+.{2 if key == 'privleak' else 3}f}"
            text = f"{diff} (p={'n/a' if m['p'] is None else format(m['p'], '.2g')})"
            cells.append(f"**{text}**" if m["exceeds_noise"] else text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(board: Mapping, path: Path, title: str) -> Path:
    """The FQ-MU plane: each (method, alpha) at its peak epoch, mean with sd error bars over seeds."""
    from rklu.eval.plots import SIGNIFICANCE, _pyplot, _save, group_color, log_axis_yerr

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 5.6))
    markers = "osD^v<>pPhX*"
    for n, g in enumerate(board["groups"]):
        fq, mu = g["stats"]["forget_quality"], g["stats"]["model_utility"]
        if fq["mean"] is None or mu["mean"] is None:
            continue
        y = max(fq["mean"], 1e-20)
        ax.errorbar([mu["mean"]], [y], xerr=[[mu["sd"] or 0.0], [mu["sd"] or 0.0]], yerr=log_axis_yerr([y], [fq["sd"]]),
                    fmt=markers[n % len(markers)], color=group_color(n), capsize=3, markersize=7,
                    label=f"{g['label']} (n={g['num_seeds']})")
    base = board["original"]
    if base.get("forget_quality") is not None:
        ax.plot([base["model_utility"]], [max(base["forget_quality"], 1e-20)], "x", color="black", markersize=9,
                label="original (before unlearning)")
    ax.axhline(SIGNIFICANCE, color="gray", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("Model utility (mean ± sd over seeds)")
    ax.set_ylabel("Forget quality (log; mean ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _baselines(demo_dir: Path) -> tuple[dict, dict, dict]:
    """(original, retain oracle, settings) from the demo folder's ``results.json`` (every invocation
    writes them)."""
    path = Path(demo_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `rklu demo --out {demo_dir}` first")
    results = json.loads(path.read_text(encoding="utf-8"))
    return results["original"], results["retain_oracle"], results["settings"]


def build(demo_dir: Path, out_dir: Path, reference: tuple[str, float | None] = REFERENCE) -> dict:
    """Read every finished run of ``demo_dir`` and write the leaderboard files into ``out_dir``."""
    from rklu.eval.plots import plot_metric_vs_alpha
    from rklu.io import atomic_write_json, atomic_write_text

    demo_dir, out_dir = Path(demo_dir), Path(out_dir)
    runs = load_runs(demo_dir)
    original, oracle, settings = _baselines(demo_dir)
    groups = group_runs(runs)
    order = {m: i for i, m in enumerate(_method_order())}
    groups.sort(key=lambda g: (order.get(g["method"], len(order)), g["method"], -1 if g["alpha"] is None else g["alpha"]))
    ref = next((g for g in groups if (g["method"], g["alpha"]) == reference), None)
    board = {"demo_dir": str(demo_dir), "settings": settings, "original": original, "retain_oracle": oracle,
             "reference": ref["label"] if ref else None, "noise_test": f"Welch t-test, p < {NOISE_P}",
             "groups": groups, "comparisons": compare(groups, reference),
             "runs": len(runs), "training_seconds": round(sum(r["time_s"] or 0.0 for r in runs), 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "leaderboard.md", markdown(board))
    model = settings.get("model", "")
    plot(board, out_dir / "fq_vs_mu.png", f"TOFU {settings.get('split')}, {model}: peak epoch, mean ± sd over seeds")
    sweep = {"groups": [{"method": g["method"], "alpha": g["alpha"],
                         "peak": {"forget_quality": g["stats"]["forget_quality"]["mean"],
                                  "model_utility": g["stats"]["model_utility"]["mean"]},
                         "sd": {"forget_quality": g["stats"]["forget_quality"]["sd"],
                                "model_utility": g["stats"]["model_utility"]["sd"]}} for g in groups]}
    files = ["leaderboard.json", "leaderboard.md", "fq_vs_mu.png"]
    if plot_metric_vs_alpha(sweep, out_dir / "alpha_sweep.png", method=reference[0]) is not None:
        files.append("alpha_sweep.png")
    board["files"] = files
    atomic_write_json(out_dir / "leaderboard.json", board)
    return board


def _method_order() -> tuple[str, ...]:
    from rklu.demo.settings import ALL_METHODS
    from rklu.methods import method_names

    return (*ALL_METHODS, *method_names())


def register(subparsers) -> None:
    p = subparsers.add_parser("leaderboard", help="every run of a demo folder as one seeded table (mean ± sd, "
                                                  "noise test, FQ-MU plot)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("demo_dir", help="the --out folder of one or more `rklu demo` invocations")
    p.add_argument("--out", default=None, help="output folder (default: DEMO_DIR/leaderboard)")
    p.add_argument("--reference", default="rklu+kl", help="the method the others are tested against (default rklu+kl)")
    p.add_argument("--reference-alpha", type=float, default=8.0, help="its alpha, when it reads one (default 8)")

    def run(args) -> int:
        from rklu.demo.settings import takes_alpha

        ref = (args.reference, args.reference_alpha if takes_alpha(args.reference) else None)
        out = Path(args.out) if args.out else Path(args.demo_dir) / "leaderboard"
        board = build(Path(args.demo_dir), out, ref)
        print((out / "leaderboard.md").read_text(encoding="utf-8"))
        print(f"rklu leaderboard: {board['runs']} runs; files in {out}: {', '.join(board['files'])}")
        return 0

    p.set_defaults(func=run)
