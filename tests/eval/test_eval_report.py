"""rklu report: per-epoch tables, peak epoch, seed means, PNG plots, and reading raw TOFU logs."""
import json
import shutil

import numpy as np
import pytest

from rklu.cli import main
from rklu.eval import report, tofu

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(root, method, seed, fqs, mus, alpha=None, layout="metrics"):
    run = root / (f"{method}_seed{seed}" + (f"_alpha{alpha}" if alpha is not None else ""))
    run.mkdir(parents=True)
    if layout == "metrics":
        rows = [{"epoch": e + 1, "forget_quality": fq, "model_utility": mu, "forget_rouge_l": 0.5 - 0.01 * e}
                for e, (fq, mu) in enumerate(zip(fqs, mus))]
        (run / "metrics.json").write_text(json.dumps(rows))
    else:  # aggregate.json per epoch folder, metadata in config.yaml
        (run / "config.yaml").write_text(f"method: {method}\nseed: {seed}\nunlearn:\n  alpha: {alpha}\n")
        for e, (fq, mu) in enumerate(zip(fqs, mus)):
            d = run / f"epoch_{e + 1}"
            d.mkdir()
            (d / "aggregate.json").write_text(json.dumps({"forget_quality": fq, "model_utility": mu, "forget_rouge_l": 0.3}))
    return run


def test_report_tables_peaks_and_plots(tmp_path):
    runs = [
        make_run(tmp_path, "rklu", 0, [1e-5, 0.2, 0.1], [0.5, 0.45, 0.4]),
        make_run(tmp_path, "rklu", 1, [1e-5, 0.4, 0.5], [0.5, 0.47, 0.3]),
        make_run(tmp_path, "ga", 0, [1e-9, 1e-3, 1e-3], [0.4, 0.1, 0.0]),
    ]
    summary = report.write_report(runs, tmp_path / "out")
    groups = {g["label"]: g for g in summary["groups"]}
    rk = groups["rklu"]
    assert rk["num_seeds"] == 2
    assert [e["forget_quality"] for e in rk["epochs"]] == pytest.approx([1e-5, 0.3, 0.3])
    assert rk["peak"]["epoch"] == 2  # tie at 0.3: the FIRST epoch reaching the peak
    assert rk["peak"]["model_utility"] == pytest.approx(0.46)
    assert rk["per_seed_peak_epoch"] == {"0": 2, "1": 3}
    assert groups["ga"]["peak"]["epoch"] == 2
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| rklu | 2 | 2 | 0.3000 | 0.4600 |" in md
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["groups"][1]["label"] == "rklu"
    assert (tmp_path / "out" / "fq_vs_mu.png").read_bytes()[:8] == PNG
    assert "metric_vs_alpha" not in summary["files"]  # no alpha sweep here


def test_alpha_sweep_plot_and_config_layout(tmp_path):
    runs = [make_run(tmp_path, "rklu", 0, [0.01, 0.2], [0.5, 0.4], alpha=a, layout="aggregate") for a in (2, 4, 8)]
    summary = report.write_report(runs, tmp_path / "out")
    assert [g["alpha"] for g in summary["groups"]] == [2, 4, 8]
    assert all(g["method"] == "rklu" and g["peak"]["epoch"] == 2 for g in summary["groups"])
    assert (tmp_path / "out" / "metric_vs_alpha.png").read_bytes()[:8] == PNG


def test_groups_get_distinct_colours_and_the_sweep_draws_sd_bars(tmp_path, monkeypatch):
    from rklu.eval import plots

    # a leaderboard with an alpha sweep has 18 groups: matplotlib's default cycle repeats after 10
    assert len({plots.group_color(n) for n in range(20)}) == 20
    drawn = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or real(fig, path))
    groups = [{"method": "rklu", "alpha": a, "peak": {"forget_quality": 0.1 * (i + 1), "model_utility": 0.4},
               "sd": {"forget_quality": 0.5 if a == 0 else 0.05, "model_utility": 0.02}}
              for i, a in enumerate((0, 8, 16))]
    assert plots.plot_metric_vs_alpha({"groups": groups}, tmp_path / "a.png").read_bytes()[:8] == PNG
    ax = drawn[0].axes[0]
    assert "mean ± sd" in ax.get_title()
    assert ax.containers and all(len(c.lines[2]) == 1 for c in ax.containers)  # one vertical bar collection each
    bars = ax.containers[0].lines[2][0].get_segments()
    # on the log axis a bar longer than its value stops at 0.1 v above 0: 0.1 - 0.09 to 0.1 + 0.5
    assert [seg[1][1] - seg[0][1] for seg in bars] == pytest.approx([0.09 + 0.5, 0.1, 0.1])
    assert plots.plot_metric_vs_alpha({"groups": [dict(g, sd=None) for g in groups]}, tmp_path / "b.png")
    assert "sd" not in drawn[1].axes[0].get_title()


def test_raw_tofu_logs_aggregated_on_the_fly_and_cli(tmp_path, capsys):
    from test_eval_aggregate import write_logs

    rng = np.random.default_rng(3)
    write_logs(tmp_path / "retain_model", rng)
    run = tmp_path / "npo+rt_seed0"
    for epoch in (1, 2):
        write_logs(run / f"epoch-{epoch}", rng, shift=1.0 * (2 - epoch))
    with pytest.raises(FileNotFoundError, match="retain-eval-dir"):
        report.collect_run(run)
    records = report.collect_run(run, tmp_path / "retain_model")
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["method"] == "npo+rt"
    expect = tofu.aggregate(run / "epoch-2", tmp_path / "retain_model")
    assert records[1]["forget_quality"] == expect["forget_quality"]
    assert records[1]["forget_rouge_l"] == expect["forget_rouge_l"]
    rc = main(["report", str(run), "--retain-eval-dir", str(tmp_path / "retain_model"), "--out", str(tmp_path / "rep")])
    assert rc == 0 and (tmp_path / "rep" / "fq_vs_mu.png").is_file()
    assert "npo+rt" in capsys.readouterr().out
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "rep2")]) == 2
    assert "no per-epoch metrics" in capsys.readouterr().err
