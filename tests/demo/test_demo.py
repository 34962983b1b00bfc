"""`rklu demo --quick` end to end (the CI smoke test of the newcomer's first command): every stage runs,
every method has finite forget quality / model utility / forget ROUGE-L, and a re-run reuses the stages."""
import json
import math

import pytest

from rklu.cli import main
from rklu.demo import ALL_METHODS


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_outputs_exist_with_finite_numbers_for_every_method(demo_out):
    results = json.loads((demo_out / "results.json").read_text())
    assert (demo_out / "fq_vs_mu.png").stat().st_size > 1000
    table = (demo_out / "results.md").read_text()
    groups = {g["method"]: g for g in results["summary"]["groups"]}
    assert set(groups) == set(ALL_METHODS)
    for method, group in groups.items():
        assert method in table
        peak = group["peak"]
        for key in ("forget_quality", "model_utility", "forget_rouge_l"):
            assert _finite(peak[key]), (method, key, peak)
        assert 0.0 <= peak["forget_quality"] <= 1.0
        epochs = [e["epoch"] for e in group["epochs"]]
        assert epochs == ([1] if method == "task-arithmetic" else list(range(1, results["settings"]["unlearn_epochs"] + 1)))
    for model in ("original", "retain_oracle"):
        assert _finite(results[model]["model_utility"]) and _finite(results[model]["forget_rouge_l"])
    assert _finite(results["original"]["forget_quality"])
    # the releases the numbers came from (a table is exact only for them)
    from importlib import metadata

    assert results["environment"]["transformers"] == metadata.version("transformers")
    assert results["environment"]["torch"] == metadata.version("torch")
    # paths relative to --out: the folder can move (and docs/demo/results.json names no machine's paths)
    assert results["files"] == {"markdown": "results.md", "plot": "fq_vs_mu.png", "json": "results.json"}
    assert all(not p.startswith("/") and (demo_out / p / "run.json").is_file() for p in results["run_dirs"].values())
    # every stage ran with the library's stages and finished
    for stage in ("original", "retain", "augmented"):
        assert json.loads((demo_out / "models" / stage / "run.json").read_text())["status"] == "completed"
    # the retain oracle shares the original's tokenizer (finetune model=tiny with tokenizer=...)
    vocab = [json.loads((demo_out / "models" / s / "model" / "tokenizer.json").read_text())["model"]["vocab"]
             for s in ("original", "retain")]
    assert vocab[0] == vocab[1]


def test_rerun_reuses_finished_stages(demo_out):
    before = json.loads((demo_out / "results.json").read_text())
    assert main(["demo", "--quick", "--out", str(demo_out), "--no-progress"]) == 0
    after = json.loads((demo_out / "results.json").read_text())
    reused = {name: t["reused"] for name, t in after["timings"].items() if name != "evaluate_baselines"}
    assert all(reused.values()), reused
    assert after["summary"]["groups"] == before["summary"]["groups"]


def test_bad_seeds_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["docs/demo", "docs/demo/env-b", "docs/demo/lambda1"])
def test_committed_demo_results_hold_relative_paths(folder):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / folder
    results = json.loads((root / "results.json").read_text())
    paths = [*results["files"].values(), *results["run_dirs"].values()]
    assert paths and all(not p.startswith("/") and "\\" not in p for p in paths)
    for p in results["files"].values():  # the committed files are there, next to results.json
        assert (root / p).is_file(), p


def _peak(group):
    """The group's row at its peak epoch: the first epoch of highest mean forget quality (report.py's rule)."""
    return max(group["epochs"], key=lambda e: (e["forget_quality"], -e["epoch"]))


def test_readme_demo_table_is_the_committed_results():
    """README's CPU-demo table is docs/demo/results.json at each method's peak epoch, to the digits shown, and
    the second environment's run (docs/demo/env-b) gave the same numbers: a regenerated demo that is not copied
    into the README, or a README edited by hand, fails here."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    results = json.loads((root / "docs/demo/results.json").read_text())
    other = json.loads((root / "docs/demo/env-b/results.json").read_text())
    assert results["summary"]["groups"] == other["summary"]["groups"]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("* The CPU demo:"):readme.index("* SmolLM2 leaderboard:")]
    rows = {m.group(1).strip(): [c.strip().strip("*") for c in m.group(2).split("|")]
            for m in re.finditer(r"^  \| ([^|]+) \|(.+)\|$", section, re.M)}

    def mean(cell):
        return float(cell.split("±")[0])

    assert abs(mean(rows["original"][0]) - results["original"]["forget_quality"]) <= 5e-3 * mean(rows["original"][0])
    assert abs(mean(rows["original"][1]) - results["original"]["model_utility"]) <= 5e-4
    for group in results["summary"]["groups"]:
        label = group["label"].replace("alpha", "α")
        peak = _peak(group)
        fq, mu = mean(rows[label][0]), mean(rows[label][1])
        assert abs(fq - peak["forget_quality"]) <= 5e-3 * max(fq, 1e-12) + 5e-5, label
        assert abs(mu - peak["model_utility"]) <= 5e-4, label


def test_any_registered_method_an_alpha_sweep_and_privleak_join_the_same_folder(demo_out):
    """A second invocation into the demo folder: a method outside the default set (whp), an alpha sweep
    (run names get _alpha2, the default alpha keeps its name) and privleak at every evaluation; the
    finished stages are reused, and the leaderboard reads every run of the folder."""
    assert main(["demo", "--quick", "--out", str(demo_out), "--no-progress", "--methods", "rklu+kl", "whp",
                 "--alphas", "2", "8", "--privacy"]) == 0
    results = json.loads((demo_out / "results.json").read_text())
    assert all(results["timings"][s]["reused"] for s in ("original", "retain", "augmented"))
    labels = {g["label"] for g in results["summary"]["groups"]}
    assert labels == {"rklu+kl (alpha=2)", "rklu+kl (alpha=8)", "whp (alpha=2)", "whp (alpha=8)"}
    runs = demo_out / "runs"
    assert {"rklu+kl_alpha2_seed1", "whp_alpha2_seed1", "whp_seed1", "rklu+kl_seed1"} <= {p.name for p in runs.iterdir()}
    assert json.loads((runs / "whp_alpha2_seed1" / "config.json").read_text())["alpha"] == 2.0
    # a finished run keeps its model, not its resume checkpoints (weights + optimizer state: disk fills)
    assert (runs / "whp_alpha2_seed1" / "model").is_dir() and not (runs / "whp_alpha2_seed1" / "checkpoints").exists()
    # privleak: the oracle is its own reference (0); every evaluated epoch has a privacy log and a value
    assert results["retain_oracle"]["privleak"] == 0.0
    assert -100.0 <= results["original"]["privleak"] <= 100.0
    for name in ("rklu+kl_seed1", "whp_alpha2_seed1"):  # rklu+kl_seed1 ran again: its old epochs had no privleak
        for record in json.loads((runs / name / "metrics.json").read_text()):
            assert _finite(record["privleak"]) and record["privleak_reference"] == "retain oracle", name
        assert (runs / name / "eval" / "epoch_1" / "eval_privacy.json").is_file()
    assert "| privleak |" in (demo_out / "results.md").read_text()

    assert main(["leaderboard", str(demo_out), "--out", str(demo_out / "board")]) == 0
    board = json.loads((demo_out / "board" / "leaderboard.json").read_text())
    by_label = {g["label"]: g for g in board["groups"]}
    assert set(by_label) == labels | {"fklu+kl (alpha=8)", "ga+rt", "npo+rt", "task-arithmetic"}
    assert board["reference"] == "rklu+kl (alpha=8)"
    assert by_label["whp (alpha=2)"]["per_seed"]["1"]["privleak"] is not None
    assert by_label["ga+rt"]["per_seed"]["1"]["privleak"] is None  # ran before privacy was on: shown as n/a
    for name in board["files"]:
        assert (demo_out / "board" / name).stat().st_size > 0
    assert "alpha_sweep.png" in board["files"]


def test_unknown_method_and_bad_alphas_are_clear_errors(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--methods", "rklu+nope"]) == 2
    err = capsys.readouterr().err
    assert "rklu+nope" in err and "unilogit+rt" in err  # names the valid ones, registered methods included
    assert main(["demo", "--quick", "--out", str(tmp_path), "--alphas", "2", "-1"]) == 2
    assert "--alphas" in capsys.readouterr().err
