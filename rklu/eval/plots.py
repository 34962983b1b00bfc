"""Plots in the style of the paper: forget quality (log scale) vs model utility per method across epochs
(Fig. 3/4), and forget quality / model utility vs alpha (Fig. 5)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

SIGNIFICANCE = 0.05  # TOFU: forget quality > 0.05 means significant forgetting


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from rklu.io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    return path


def group_color(n: int):
    """The n-th group's colour: tab20's ten dark shades, then its ten light ones, so up to 20 groups (a
    leaderboard with an alpha sweep has 18) never share one; matplotlib's default cycle repeats after 10."""
    import matplotlib

    return matplotlib.colormaps["tab20"]((2 * n) % 20 + (n // 10) % 2)


def log_axis_yerr(values, sds) -> list:
    """Error bars of ``values`` ± ``sds`` for a log y axis: [lower, upper], the lower bar capped at 0.9 of its
    value so that it ends above 0 (a bar through 0 has no log)."""
    sds = [sd or 0.0 for sd in sds]
    return [[min(sd, 0.9 * v) for sd, v in zip(sds, values)], sds]


def _positive(value):
    return value is not None and value > 0


def plot_fq_vs_mu(summary: Mapping, path: str | os.PathLike, title: str = "Forget quality vs model utility",
                  paper: Mapping | None = None) -> Path:
    """One line per method: its epochs' (model utility, forget quality) seed means; the peak epoch starred.
    ``paper`` (``rklu.eval.paper.paper_results``): the published points as labelled hollow diamonds, in the
    colour of our run of the same method (gray for methods we did not run)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 5.4) if paper else (6.4, 4.8))
    floor = 1e-20
    colors = {g["method"]: group_color(n) for n, g in enumerate(summary["groups"])}
    for n, group in enumerate(summary["groups"]):
        pts = [(e["model_utility"], max(e["forget_quality"], floor), e["epoch"]) for e in group["epochs"]
               if e["model_utility"] is not None and e["forget_quality"] is not None]
        if not pts:
            continue
        color = group_color(n)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=color, alpha=0.45, markersize=3, label=None)
        peak = group.get("peak")
        if peak and peak.get("model_utility") is not None and peak.get("forget_quality") is not None:
            ax.plot([peak["model_utility"]], [max(peak["forget_quality"], floor)], "*", color=color, markersize=14,
                    markeredgecolor="black", label=f"{group['label']} (epoch {peak['epoch']})")
    if paper:
        labelled = set()
        # named points sorted by utility, labels alternately above-left and below-right: neighbours do not collide
        named = sorted((r for r in paper["rows"] if r["method"] in colors and r.get("model_utility") is not None),
                       key=lambda r: r["model_utility"])
        above = {r["method"]: n % 2 == 0 for n, r in enumerate(named)}
        for row in paper["rows"]:
            if row.get("model_utility") is None or row.get("forget_quality") is None:
                continue  # e.g. FKLU: no published model utility
            x, y = row["model_utility"], max(row["forget_quality"], floor)
            ours = row["method"] in colors
            # the methods we ran: large, in our colour, named; the paper's others: small gray context (see the table)
            kind = "ours" if ours else "other"
            label = None
            if kind not in labelled:
                label = (f"paper, same method: {paper['label']}" if ours else "paper, other methods (see report.md)")
                labelled.add(kind)
            ax.plot([x], [y], "D", markerfacecolor="none", markeredgecolor=colors.get(row["method"], "0.6"),
                    markersize=8 if ours else 5, markeredgewidth=1.5 if ours else 0.8, label=label)
            if ours:
                up = above[row["method"]]
                ax.annotate(row["paper_label"], (x, y), textcoords="offset points", xytext=(-6, 4) if up else (6, -11),
                            ha="right" if up else "left", fontsize=7, color=colors[row["method"]])
    ax.set_yscale("log")
    ax.axhline(SIGNIFICANCE, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("Model utility")
    ax.set_ylabel("Forget quality (KS-test p-value, log)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_metric_vs_alpha(summary: Mapping, path: str | os.PathLike, method: str | None = None) -> Path | None:
    """Forget quality (log, left) and model utility (right) at the peak epoch vs alpha, per method having
    at least two alpha values; ``None`` (nothing written) when no method does. A group's optional ``sd``
    (``{"forget_quality": ..., "model_utility": ...}``, over seeds) draws error bars."""
    by_method: dict = {}
    for group in summary["groups"]:
        if group.get("alpha") is None or group.get("peak") is None or (method and group["method"] != method):
            continue
        by_method.setdefault(group["method"], []).append(group)
    by_method = {m: sorted(gs, key=lambda g: float(g["alpha"])) for m, gs in by_method.items() if len(gs) >= 2}
    if not by_method:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax2 = ax.twinx()
    for n, (name, groups) in enumerate(sorted(by_method.items())):
        alphas = [float(g["alpha"]) for g in groups]
        fq = [max(v, 1e-20) if (v := g["peak"]["forget_quality"]) is not None else float("nan") for g in groups]
        mu = [v if (v := g["peak"]["model_utility"]) is not None else float("nan") for g in groups]
        fq_sd = [(g.get("sd") or {}).get("forget_quality") for g in groups]
        mu_sd = [(g.get("sd") or {}).get("model_utility") or 0.0 for g in groups]
        ax.errorbar(alphas, fq, yerr=log_axis_yerr(fq, fq_sd), fmt="-o", color=f"C{2 * n}", capsize=3,
                    label=f"{name}: forget quality")
        ax2.errorbar(alphas, mu, yerr=mu_sd, fmt="--s", color=f"C{2 * n + 1}", capsize=3,
                     label=f"{name}: model utility")
    ax.set_yscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("Forget quality (log)")
    ax2.set_ylabel("Model utility")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="center right")
    with_sd = any(g.get("sd") for groups in by_method.values() for g in groups)
    ax.set_title("Influence of alpha (peak epoch" + (", mean ± sd over seeds)" if with_sd else ")"))
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
