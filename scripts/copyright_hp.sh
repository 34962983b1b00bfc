#!/usr/bin/env bash
# Paper Table 1: copyright-style unlearning of a book (the paper: Harry Potter; bring your own text, none
# is shipped). Augment 1 epoch on the text, unlearn with alpha 4, then BLEU/ROUGE-L of continuations of
# 200-token prompts, perplexity on WikiText (or PPL_FILE), and lm-eval capability tasks.
#   scripts/copyright_hp.sh BOOK.txt [METHOD ...]     (default methods: rklu+kl ga+kl npo+kl)
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
book=${1:?usage: scripts/copyright_hp.sh BOOK.txt [METHOD ...]}
shift
methods=("$@"); [ ${#methods[@]} -gt 0 ] || methods=(rklu+kl ga+kl npo+kl)
[ -f "$book" ] || { echo "no such text file: $book" >&2; exit 2; }
out=${OUT:-runs/hp-llama2-7b}
launch=${LAUNCH:-rklu}
ORIGINAL=${ORIGINAL:-meta-llama/Llama-2-7b-chat-hf}
ppl=(--wikitext); [ -n "${PPL_FILE:-}" ] && ppl=(--ppl-file "$PPL_FILE")
[ -d "$out/augmented/model" ] || run $launch augment --preset hp-llama2-7b --model "$ORIGINAL" --forget "$book" --output-dir "$out/augmented"
for method in "${methods[@]}"; do
  run=$out/unlearn/$method
  [ -d "$run/model" ] || run $launch unlearn --preset hp-llama2-7b --method "$method" --model "$ORIGINAL" \
    --augmented "$out/augmented/model" --forget "$book" --output-dir "$run"
done
for model in "$ORIGINAL" "$out"/unlearn/*/model; do
  name=$(basename "$(dirname "$model")"); [ "$model" = "$ORIGINAL" ] && name=original
  run rklu eval copyright --model "$model" --text "$book" "${ppl[@]}" --out "$out/eval/$name/copyright.json"
  run rklu eval capability --model "$model" --out "$out/eval/$name/capability.json" || echo "capability eval skipped (needs: pip install 'rklu[eval]')"
done
