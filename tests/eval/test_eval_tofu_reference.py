"""`rklu eval tofu` logs against a port of TOFU's own evaluation (tests/eval/tofu_reference.py) on the same tiny
model: every per-sample value agrees to 1e-5, token counts and generations exactly. The tiny model is
random, so its generations rarely stop at EOS: they run to TOFU's 200-token budget, which includes the left
padding of index-ordered batches of 30 — the case where batching changes the logs."""
import json
import math

import pytest

from tofu_reference import get_all_evals

from rklu.data.formatting import get_prompt_format
from rklu.data.tofu import load_tofu
from rklu.eval import tofu

ROWS = 40

@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer()
    return tiny_model(tok, seed=3), tok


def _rows(config, n=ROWS):
    ds = load_tofu(config)
    return [dict(ds[i]) for i in range(min(n, len(ds)))]


def _compare(ours: dict, theirs: dict, where: str):
    assert set(ours) == {k for k in theirs}, where
    for metric, values in theirs.items():
        assert len(ours[metric]) == len(values), (where, metric)
        for index, expected in values.items():
            got = ours[metric][str(index)]
            if metric == "generated_text":
                assert list(got) == list(expected), (where, metric, index)
            elif metric.startswith("num_token"):
                assert got == expected, (where, metric, index)
            else:
                got_l, exp_l = [float(x) for x in _flat(got)], [float(x) for x in _flat(expected)]
                assert len(got_l) == len(exp_l), (where, metric, index)
                for g, e in zip(got_l, exp_l):
                    assert math.isclose(g, e, rel_tol=1e-5, abs_tol=1e-5), (where, metric, index, g, e)


def _flat(x):
    return x if isinstance(x, list) else [x]


@pytest.mark.parametrize("family,fmt_name,sets", [
    ("phi", "phi", [("forget01_perturbed", "paraphrased_answer", False), ("real_authors_perturbed", "answer", True)]),
    ("llama2-7b", "llama2", [("forget01_perturbed", "paraphrased_answer", False)]),
])
def test_logs_match_tofu_port_per_sample(model_and_tokenizer, family, fmt_name, sets, tmp_path):
    model, tok = model_and_tokenizer
    fmt = get_prompt_format(fmt_name)
    for config, base_key, normalize in sets:
        rows = _rows(config)
        ours = tofu.evaluate_set(model, tok, fmt, rows, base_answer_key=base_key, normalize_gt=normalize)
        ours = json.loads(json.dumps(ours))  # as written to disk
        theirs = get_all_evals(model, tok, rows, family, base_key, normalize_gt=normalize)
        _compare(ours, theirs, f"{family}/{config}")


def test_sorted_batching_changes_budgets_the_tofu_default_does_not(model_and_tokenizer):
    """The faster --sort-by-length mode gives some non-stopping generations a different (larger) budget:
    this is why TOFU's index-ordered batches are the default."""
    model, tok = model_and_tokenizer
    fmt = get_prompt_format("phi")
    rows = _rows("real_authors_perturbed", 60)
    prompts = [fmt.prompt(r["question"]) for r in rows]
    default = tofu.generate_greedy(model, tok, prompts)
    sorted_ = tofu.generate_greedy(model, tok, prompts, sort_by_length=True)
    assert sum(a != b for a, b in zip(default, sorted_)) > 0
