"""Test-side reference: a port of TOFU's per-sample evaluation, to check ``rklu eval tofu`` against.

Ported from locuslab/tofu (MIT), commit 8c49eee7da2b96b2b718c41c66f4e21331c89189:
``data_module.py`` (``convert_raw_data_to_model_format``, ``TextDatasetQA.__getitem__``, ``get_batch_loss``),
``evaluate_util.py`` (``get_all_evals``, ``run_generation``, ``eval_rouge_recall``,
``eval_perturbation_ratio``, ``get_dataloader``) and ``config/model_config.yaml`` /
``config/eval_everything.yaml`` (tags, ``generation.max_length=200``, ``max_new_tokens=null``,
``batch_size=30``). The structure follows TOFU's code step by step (fixed-length padding to
``max_length`` with EOS, index-ordered batches of 30 for the true answers and generation, 30 // 4 = 7 for
the paraphrased/perturbed answers, the decode-and-split generation prompts) so that a difference from
rklu's batched implementation shows up here. Deliberate departures: no hydra/dataloader objects, the
model is passed in, and the tokenizer is copied before ``run_generation`` sets its padding side and pad
token (TOFU mutates the shared tokenizer).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

# config/model_config.yaml
MODEL_CONFIGS = {
    "llama2-7b": {"question_start_tag": "[INST] ", "question_end_tag": " [/INST]", "answer_tag": ""},
    "phi": {"question_start_tag": "Question: ", "question_end_tag": "\n", "answer_tag": "Answer: "},
}
MAX_LENGTH = 200  # eval_everything.yaml generation.max_length
BATCH_SIZE = 30   # eval_everything.yaml batch_size


def convert_raw_data_to_model_format(tokenizer, max_length, question, answer, model_configs):
    new_question = model_configs["question_start_tag"] + question + model_configs["question_end_tag"]
    new_answer = model_configs["answer_tag"] + answer
    full_text = new_question + new_answer
    num_question_tokens = len(tokenizer.tokenize(new_question, add_special_tokens=True))
    encoded = tokenizer(full_text, add_special_tokens=True, max_length=max_length, truncation=True)
    pad_length = max_length - len(encoded.input_ids)
    pad_input_ids = encoded["input_ids"] + [tokenizer.eos_token_id] * pad_length
    pad_attention_mask = encoded["attention_mask"] + [0] * pad_length
    if len(encoded.input_ids) == max_length:
        label = encoded.input_ids
    else:
        label = encoded["input_ids"] + [tokenizer.eos_token_id] + [-100] * (pad_length - 1)
    for i in range(num_question_tokens):
        label[i] = -100
    return torch.tensor(pad_input_ids), torch.tensor(label), torch.tensor(pad_attention_mask)


def dataset_item(tokenizer, rows, idx, answer_key, model_configs, max_length=MAX_LENGTH):
    """``TextDatasetQA.__getitem__`` (one answer -> [L]; a list of answers -> [n, L] after ``squeeze``)."""
    question = rows[idx]["question"]
    answers = rows[idx][answer_key]
    if isinstance(answers, str):
        answers = [answers]
    ids, labels, masks = [], [], []
    for answer in answers:
        i, l, m = convert_raw_data_to_model_format(tokenizer, max_length, question, answer, model_configs)
        ids.append(i)
        labels.append(l)
        masks.append(m)
    return (torch.stack(ids).squeeze(), torch.stack(labels).squeeze(), torch.stack(masks).squeeze(),
            torch.tensor(idx))


def batches(tokenizer, rows, answer_key, model_configs, batch_size, max_length=MAX_LENGTH):
    """``DataLoader(..., batch_size, collate_fn=custom_data_collator_with_indices)`` in index order."""
    for start in range(0, len(rows), batch_size):
        items = [dataset_item(tokenizer, rows, i, answer_key, model_configs, max_length)
                 for i in range(start, min(start + batch_size, len(rows)))]
        yield tuple(torch.stack([item[k] for item in items]) for k in range(4))


def get_batch_loss(output, labels):
    shifted_labels = labels[..., 1:].contiguous()
    output = output[..., :-1, :].contiguous()
    loss_function = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    return loss_function(output.transpose(-1, -2), shifted_labels).sum(dim=-1)


def run_generation(model_family, batch, model, tokenizer, max_length=MAX_LENGTH):
    input_ids = batch["input_ids"]
    input_strings = tokenizer.batch_decode(input_ids, skip_special_tokens=True)
    split_symbol = " [/INST]" if model_family == "llama2-7b" else "Answer: "
    ground_truth = [s.split(split_symbol)[1] for s in input_strings]
    input_strings = [s.split(split_symbol)[0] for s in input_strings]
    if model_family == "llama2-7b":
        input_strings = [s + split_symbol for s in input_strings]
    left_pad_tokenizer = copy.deepcopy(tokenizer)
    left_pad_tokenizer.padding_side = "left"
    left_pad_tokenizer.pad_token = left_pad_tokenizer.eos_token
    inputs = left_pad_tokenizer(input_strings, add_special_tokens=True, return_tensors="pt", padding=True)
    out = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, max_length=max_length,
                         max_new_tokens=None, do_sample=False, use_cache=True,
                         pad_token_id=left_pad_tokenizer.eos_token_id)
    strs = left_pad_tokenizer.batch_decode(out[:, inputs.input_ids.shape[-1]:], skip_special_tokens=True)
    return input_strings, strs, ground_truth


def eval_rouge_recall(gen_outputs, ground_truths, indices):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    rouge1_recall, rougeL_recall = {}, {}
    for gen, gt, idx in zip(gen_outputs, ground_truths, indices):
        scores = scorer.score(gt, gen)
        rouge1_recall[idx] = scores["rouge1"].recall
        rougeL_recall[idx] = scores["rougeL"].recall
    return {"rouge1_recall": rouge1_recall, "rougeL_recall": rougeL_recall}


def eval_perturbation_ratio(base_batches, perturb_batches, model):
    eval_logs = {k: {} for k in ("average_perturb_loss", "avg_paraphrased_loss", "truth_ratio", "paraphrased_loss",
                                 "perturb_loss", "num_token_paraphrased", "num_token_perturb")}
    for batch, perturb_batch in zip(base_batches, perturb_batches):
        input_ids, labels, attention_mask, indices = batch
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        perturb_input_ids, perturb_labels, perturb_attention_mask, _ = perturb_batch
        if len(perturb_input_ids.shape) > 2:
            bsz, seq_len = perturb_input_ids.shape[0:2]
        else:
            bsz, seq_len = perturb_input_ids.shape[0], 1
        perturb_batch = {"input_ids": perturb_input_ids.view(bsz * seq_len, -1),
                         "labels": perturb_labels.view(bsz * seq_len, -1),
                         "attention_mask": perturb_attention_mask.view(bsz * seq_len, -1)}
        with torch.no_grad():
            outputs = model(**batch)
            perturb_outputs = model(**perturb_batch)
        gt_loss = get_batch_loss(outputs.logits, batch["labels"])
        perturb_loss = get_batch_loss(perturb_outputs.logits, perturb_batch["labels"]).view(bsz, seq_len)
        num_token_gt = (batch["labels"] != -100).sum(-1)
        num_token_perturb = (perturb_batch["labels"] != -100).view(bsz, seq_len, -1).sum(-1)
        perturb_loss_per_token = perturb_loss / num_token_perturb
        gt_loss_per_token = gt_loss / num_token_gt
        truth_ratio = torch.exp(gt_loss_per_token - perturb_loss_per_token.mean(-1))
        idx = indices.cpu().numpy().tolist()
        for key, value in (("average_perturb_loss", perturb_loss_per_token), ("avg_paraphrased_loss", gt_loss_per_token),
                           ("truth_ratio", truth_ratio), ("paraphrased_loss", gt_loss), ("perturb_loss", perturb_loss),
                           ("num_token_paraphrased", num_token_gt), ("num_token_perturb", num_token_perturb)):
            eval_logs[key].update(dict(zip(idx, value.cpu().numpy().tolist())))
    return eval_logs


def get_all_evals(model, tokenizer, rows, model_family, base_answer_key, normalize_gt=False,
                  batch_size=BATCH_SIZE, max_length=MAX_LENGTH):
    """TOFU's per-sample log of one evaluation set (integer keys, as TOFU builds it before json.dump)."""
    cfg = MODEL_CONFIGS[model_family]
    eval_logs = {k: {} for k in ("avg_gt_loss", "gt_loss", "num_token_gt", "generated_text")}
    gen_outputs, ground_truths, all_indices = [], [], []
    model.eval()
    for input_ids, labels, attention_mask, indices in batches(tokenizer, rows, "answer", cfg, batch_size, max_length):
        idx = indices.cpu().numpy().tolist()
        all_indices.extend(idx)
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        with torch.no_grad():
            outputs = model(**batch)
            input_string, gen_output, gt = run_generation(model_family, batch, model, tokenizer, max_length)
        gen_outputs.extend(gen_output)
        ground_truths.extend(gt)
        gt_loss = get_batch_loss(outputs.logits, batch["labels"])
        num_token_gt = (batch["labels"] != -100).sum(-1)
        eval_logs["avg_gt_loss"].update(dict(zip(idx, (gt_loss / num_token_gt).cpu().numpy().tolist())))
        eval_logs["gt_loss"].update(dict(zip(idx, gt_loss.cpu().numpy().tolist())))
        eval_logs["num_token_gt"].update(dict(zip(idx, num_token_gt.cpu().numpy().tolist())))
        eval_logs["generated_text"].update(dict(zip(idx, zip(input_string, gen_output, gt))))
    eval_logs.update(eval_rouge_recall(gen_outputs, ground_truths, all_indices))
    small = batch_size // 4
    eval_logs.update(eval_perturbation_ratio(batches(tokenizer, rows, base_answer_key, cfg, small, max_length),
                                             batches(tokenizer, rows, "perturbed_answer", cfg, small, max_length), model))
    if normalize_gt:
        normalized = {}
        for idx in eval_logs["avg_gt_loss"]:
            truth_prob = np.exp(-1 * eval_logs["avg_gt_loss"][idx])
            perturb_prob = np.exp(-1 * np.array(eval_logs["average_perturb_loss"][idx]))
            all_prob = np.array([truth_prob, *perturb_prob])
            normalized[idx] = -1 * np.log(truth_prob / all_prob.sum())
        eval_logs["normalized_gt_loss"] = normalized
    return eval_logs
