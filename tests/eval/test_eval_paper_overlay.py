"""`rklu report --paper`: the paper's published TOFU numbers (package data) parse, are drawn on the forget
quality vs model utility plot, and sit beside ours in the table."""
import json

import pytest

from rklu.cli import main
from rklu.eval import paper, report

from test_eval_report import PNG, make_run


def test_paper_data_parse_with_citation_and_spot_values():
    data = paper.load_paper_data()
    assert "NAACL 2025" in data["citation"] and "Wang" in data["citation"]
    rows = data["results"]
    # Table 8: 14 methods x 3 splits; Table 3 adds FKLU (no published model utility)
    assert sum(r["table"] == 8 for r in rows) == 42 and sum(r["method"] == "fklu" for r in rows) == 3
    get = {(r["split"], r["method"]): r for r in rows}
    # typed by hand from the paper once more, independently of the data file
    assert (get["forget10", "rklu"]["forget_quality"], get["forget10", "rklu"]["model_utility"]) == (0.5182, 0.5529)
    assert (get["forget01", "rklu"]["forget_quality"], get["forget01", "rklu"]["model_utility"]) == (0.9659, 0.5913)
    assert (get["forget05", "dpo+kl"]["forget_quality"], get["forget05", "dpo+kl"]["model_utility"]) == (7.5e-5, 0.5123)
    assert (get["forget10", "ga"]["forget_quality"], get["forget10", "ga"]["model_utility"]) == (1.15e-4, 0.0023)
    assert (get["forget10", "idk"]["forget_quality"], get["forget05", "task-arithmetic"]["model_utility"]) == (1.60e-11, 0.3581)
    assert get["forget05", "fklu"]["forget_quality"] == 2.96e-05 and get["forget05", "fklu"]["model_utility"] is None
    assert all(r["model"] == "llama2-7b" for r in rows)


def test_paper_data_errors(tmp_path):
    with pytest.raises(ValueError, match="no Phi-1.5 numbers"):
        paper.paper_results("phi-1.5", "forget10")
    with pytest.raises(ValueError, match="unknown paper model"):
        paper.paper_results("gpt", "forget10")
    bad = paper.load_paper_data()
    bad["results"][0]["model_utility"] = 51.33
    (tmp_path / "p.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a probability"):
        paper.load_paper_data(tmp_path / "p.json")


def test_report_overlays_the_paper_on_plot_and_table(tmp_path, capsys, monkeypatch):
    runs = [make_run(tmp_path, "rklu+kl", 0, [1e-4, 0.3, 0.2], [0.6, 0.55, 0.5]),
            make_run(tmp_path, "ga", 0, [1e-6, 1e-2, 1e-3], [0.5, 0.2, 0.1])]
    for run in runs:  # the runs' split, read from their config (forget: tofu:forget10)
        (run / "config.yaml").write_text("stage: unlearn\nforget: tofu:forget10\n")
    drawn = []
    from rklu.eval import plots

    real = plots.plot_fq_vs_mu
    monkeypatch.setattr(plots, "plot_fq_vs_mu", lambda *a, **k: drawn.append(k.get("paper")) or real(*a, **k))
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "out"), "--paper", "llama2-7b"]) == 0
    md = capsys.readouterr().out
    assert "Beside the paper: Wang et al. (NAACL 2025), LLaMA2-chat-7B, forget10" in md
    # ours at the peak epoch beside the paper's row of the same method; the paper's other methods follow
    assert "| rklu+kl | 0.3000 | 0.7220 | 0.5500 | 0.5801 | 0.4900 | 0.3565 |" in md
    assert "| ga | 0.0100 | 1.15e-04 | 0.2000 | 0.0023 |" in md
    assert "| rklu | | 0.5182 | | 0.5529 | | 0.3437 |" in md
    assert drawn and drawn[0]["split"] == "forget10" and len(drawn[0]["rows"]) == 15
    png = tmp_path / "out" / "fq_vs_mu.png"
    assert png.read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["paper"]["model"] == "llama2-7b" and "Table 3/8" in saved["paper"]["label"]
    # the overlay adds drawn points: the PNG differs from the one without it
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "fq_vs_mu.png").read_bytes() != png.read_bytes()


def test_paper_split_must_be_known(tmp_path, capsys):
    run = make_run(tmp_path, "rklu", 0, [0.1], [0.5])  # no config: split unknown
    assert main(["report", str(run), "--out", str(tmp_path / "o"), "--paper", "llama2-7b", "--no-plots"]) == 2
    assert "--paper-split" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "o"), "--paper", "llama2-7b", "--paper-split",
                 "forget01", "--no-plots"]) == 0
    assert "| rklu | 0.1000 | 0.9659 |" in capsys.readouterr().out
