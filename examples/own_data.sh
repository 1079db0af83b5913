#!/usr/bin/env bash
# Your own data, end to end: a CSV of movie reviews with string labels -> RANDOM-LT tickets and dense members ->
# ensembles and the paper's comparison -> predictions on new, unlabelled reviews with the averaged ensemble.
#
#   examples/own_data.sh            # 2,000 training reviews, 872 validation reviews, seeds 1-3: ~15 min on 2 cores
#
# The reviews are sampled (fixed seed) from GLUE's SST-2 files (train.tsv, dev.tsv; not embedded in ticketctl: get
# GLUE's SST-2 download) in DATA_SRC (default ../shared/data/glue/SST-2, a folder outside this repository) and
# rewritten as your data would look: a CSV with columns review,sentiment (negative/positive), a JSON Lines
# validation file, and a CSV of new reviews without labels. Environment: SEEDS, OUT (default runs-own), ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${DATA_SRC:-../shared/data/glue/SST-2}
if [[ ! -f $SRC/train.tsv || ! -f $SRC/dev.tsv ]]; then
  echo "own_data.sh: no SST-2 train.tsv/dev.tsv in $SRC; SST-2 is not embedded in ticketctl: set DATA_SRC to a folder" \
       "holding GLUE's SST-2 download (train.tsv, dev.tsv)" >&2
  exit 2
fi
OUT=${OUT:-runs-own}
SEEDS=${SEEDS:-"1 2 3"}
DATA=$OUT/data
mkdir -p "$DATA" "$OUT/models"
start=$(date +%s)

python - "$SRC" "$DATA" <<'PY'
import csv, json, sys
import numpy as np
src, out = sys.argv[1], sys.argv[2]
def rows(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:] if l]
names = {"0": "negative", "1": "positive"}
rng = np.random.default_rng(0)
train = rows(f"{src}/train.tsv")
dev = rows(f"{src}/dev.tsv")
pick = rng.choice(len(train), 2000, replace=False)
held = rng.permutation(len(dev))
with open(f"{out}/reviews-train.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["review", "sentiment"])
    w.writerows([train[i]["sentence"].strip(), names[train[i]["label"]]] for i in pick)
with open(f"{out}/reviews-validation.jsonl", "w", encoding="utf-8") as f:
    for i in held[:872]:
        f.write(json.dumps({"review": dev[i]["sentence"].strip(), "sentiment": names[dev[i]["label"]]}) + "\n")
with open(f"{out}/reviews-new.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["id", "review"])
    w.writerows([n, dev[i]["sentence"].strip()] for n, i in enumerate(held[872:1872]))
with open(f"{out}/reviews-new-answers.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["id", "review", "sentiment"])
    w.writerows([n, dev[i]["sentence"].strip(), names[dev[i]["label"]]] for n, i in enumerate(held[872:1872]))
PY

# shellcheck disable=SC2206
OWN=(--train-file "$DATA/reviews-train.csv" --validation-file "$DATA/reviews-validation.jsonl"
     --text-columns review --label-column sentiment --task reviews --out "$OUT" ${ARGS:-})
for s in $SEEDS; do
  [[ -d $OUT/models/dense-s$s ]] || ticketctl finetune "${OWN[@]}" --seed "$s" --save-model "$OUT/models/dense-s$s" >/dev/null
  mask=$(ticketctl search "${OWN[@]}" --policy random --seed "$s")
  [[ -d $OUT/models/random-s$s ]] || ticketctl finetune "${OWN[@]}" --seed "$s" --mask "$mask" \
    --save-model "$OUT/models/random-s$s" >/dev/null
done

"$(dirname "$0")/machine.sh"
echo
echo "## ensembles on the validation reviews"
for scheme in dense random; do
  echo "### $scheme"
  ls "$OUT"/reviews-logits-dev-"$scheme"-s*.safetensors | ticketctl ensemble - --size 1-3 --format markdown
done
echo "## Table 1"
ls "$OUT"/reviews-logits-dev-{dense,random}-s*.safetensors | ticketctl stats - --format markdown
echo "## predictions on new reviews (the three RANDOM-LT members, averaged)"
members=()
for s in $SEEDS; do members+=(-m "$OUT/models/random-s$s"); done
ticketctl predict "$DATA/reviews-new.csv" "${members[@]}" --out "$OUT" --ensemble --output "$OUT/predictions.tsv" >/dev/null
head -6 "$OUT/predictions.tsv"
echo "## the same members scored on the new reviews' answers"
ticketctl predict "$DATA/reviews-new-answers.csv" "${members[@]}" --out "$OUT" | ticketctl ensemble - --format markdown
echo "elapsed: $(( $(date +%s) - start )) s"
