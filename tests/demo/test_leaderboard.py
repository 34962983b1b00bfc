"""``rklu leaderboard`` on a hand-made demo folder: grouping by (method, alpha), the peak epoch, mean and
sample sd over seeds, Welch's test against the reference, and unfinished runs left out."""
import json
import math

import pytest

from rklu.demo import leaderboard


def _write_run(root, name, method, seed, alpha, epochs, status="completed"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": method, "seed": seed, "alpha": alpha}))
    (run / "run.json").write_text(json.dumps({"status": status, "time_s": 10.0 * seed}))
    (run / "metrics.json").write_text(json.dumps(
        [{"epoch": n + 1, "forget_quality": fq, "model_utility": mu, "forget_rouge_l": 0.2, "privleak": leak}
         for n, (fq, mu, leak) in enumerate(epochs)]))


@pytest.fixture()
def folder(tmp_path):
    base = {"forget_quality": 1e-4, "model_utility": 0.5, "forget_rouge_l": 0.9, "privleak": -90.0}
    (tmp_path / "results.json").write_text(json.dumps({
        "original": base, "retain_oracle": {**base, "forget_quality": 1.0, "privleak": 0.0},
        "settings": {"model": "tiny", "split": "forget01"}}))
    # the reference: peak at epoch 2 (seed-mean fq 0.3 vs 0.1)
    for seed, mu in ((1, 0.40), (2, 0.42), (3, 0.41)):
        _write_run(tmp_path, f"rklu+kl_seed{seed}", "rklu+kl", seed, 8.0,
                   [(0.1, 0.45, -50.0), (0.2 + 0.1 * seed, mu, -10.0 * seed)])
    # clearly higher utility, same forget quality range: utility exceeds noise, forget quality does not
    for seed, mu in ((1, 0.60), (2, 0.61), (3, 0.62)):
        _write_run(tmp_path, f"npo+rt_seed{seed}", "npo+rt", seed, 8.0, [(0.2 + 0.1 * seed, mu, -20.0)])
    _write_run(tmp_path, "rklu+kl_alpha2_seed1", "rklu+kl", 1, 2.0, [(0.01, 0.5, -80.0)])
    _write_run(tmp_path, "ga+rt_seed1", "ga+rt", 1, 8.0, [(0.9, 0.1, 10.0)], status="running")  # unfinished
    return tmp_path


def test_groups_peaks_and_spread(folder):
    board = leaderboard.build(folder, folder / "out")
    by_label = {g["label"]: g for g in board["groups"]}
    assert set(by_label) == {"rklu+kl (alpha=8)", "rklu+kl (alpha=2)", "npo+rt"}  # npo reads no alpha; ga unfinished
    ref = by_label["rklu+kl (alpha=8)"]
    assert ref["peak_epoch"] == 2 and ref["num_seeds"] == 3
    assert ref["stats"]["forget_quality"]["mean"] == pytest.approx(0.4)
    assert ref["stats"]["forget_quality"]["sd"] == pytest.approx(0.1)
    assert ref["stats"]["privleak"]["mean"] == pytest.approx(-20.0)
    assert ref["seconds_per_run"] == pytest.approx(20.0)
    assert by_label["rklu+kl (alpha=2)"]["stats"]["model_utility"]["sd"] is None  # one seed: no spread
    assert board["runs"] == 7


def test_noise_test_is_welch_on_the_seeds(folder):
    from scipy import stats

    board = leaderboard.build(folder, folder / "out")
    row = next(r for r in board["comparisons"] if r["label"] == "npo+rt")
    mu = row["metrics"]["model_utility"]
    assert mu["p"] == pytest.approx(stats.ttest_ind([0.60, 0.61, 0.62], [0.40, 0.42, 0.41], equal_var=False).pvalue)
    assert mu["exceeds_noise"] and mu["difference"] == pytest.approx(0.2)
    fq = row["metrics"]["forget_quality"]  # on log10: the same three values, so no difference at all
    assert not fq["exceeds_noise"] and fq["geometric_ratio"] == pytest.approx(1.0)
    one_seed = next(r for r in board["comparisons"] if r["label"] == "rklu+kl (alpha=2)")
    assert one_seed["metrics"]["model_utility"]["p"] is None and not one_seed["metrics"]["model_utility"]["exceeds_noise"]
    table = (folder / "out" / "leaderboard.md").read_text()
    assert "**+0.200" in table and "| npo+rt | 1 |" not in table
    assert math.isclose(leaderboard.welch_p([1.0, 1.0], [1.0, 1.0]), 1.0)


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs folder"):
        leaderboard.build(tmp_path, tmp_path / "out")


def test_committed_smollm2_leaderboard_is_what_the_docs_and_readme_show():
    """docs/leaderboard-smollm2.md and the README show the committed leaderboard's table line for line, and
    the table is the committed leaderboard.json: a regenerated board not copied into the docs, or a number
    edited by hand, fails here."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    folder = root / "docs" / "leaderboard-smollm2"
    board = json.loads((folder / "leaderboard.json").read_text())
    table = (folder / "leaderboard.md").read_text().split("\n\n")[0].splitlines()
    assert len(table) == 4 + len(board["groups"])  # header, rule, original, oracle, one row per group
    for group in board["groups"]:
        row = next(line for line in table if line.startswith(f"| {group['label']} |"))
        fq = group["stats"]["forget_quality"]["mean"]
        assert leaderboard._fmt(fq) in row.split("|")[4]
    doc = (root / "docs" / "leaderboard-smollm2.md").read_text()
    readme = (root / "README.md").read_text()
    for line in table:
        assert line in doc, line
        assert line in readme, line
    for name in board["files"]:
        assert (folder / name).is_file(), name
    assert not Path(board["demo_dir"]).is_absolute()  # no machine's paths in the committed board
