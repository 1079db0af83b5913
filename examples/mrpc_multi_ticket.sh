#!/usr/bin/env bash
# Multi-Ticket Ensemble on MRPC with the default model: the paper's schemes, then Table 1, the diversity table,
# Figure 3 (ensemble gain vs members) and Figure 4 (mask IoU).
#
#   examples/mrpc_multi_ticket.sh            # SEEDS="1 2 3" SCHEMES="dense random base"
#   SEEDS="$(seq 1 10)" SCHEMES="dense bagging base active random" examples/mrpc_multi_ticket.sh
#   QUICK=1 examples/mrpc_multi_ticket.sh    # 400 training examples, 1 epoch: a smoke run of the whole pipeline
#
# Every step is skipped when its artifact exists already, so the script can be rerun after an interruption.
set -euo pipefail
TASK=${TASK:-mrpc}
SEEDS=${SEEDS:-"1 2 3"}
SCHEMES=${SCHEMES:-"dense random base"}
OUT=${OUT:-runs}
REPORT=${REPORT:-report}
EXTRA=()
if [[ -n "${QUICK:-}" ]]; then EXTRA=(--max-train-samples 400 --epochs 1); fi
mkdir -p "$REPORT"

active_priors=()
for s in $SEEDS; do
  for scheme in $SCHEMES; do
    case $scheme in
      dense)   ticketctl finetune --task "$TASK" --seed "$s" --out "$OUT" "${EXTRA[@]}" ;;
      bagging) ticketctl finetune --task "$TASK" --seed "$s" --bagging 0.9 --out "$OUT" "${EXTRA[@]}" ;;
      base|random)
        mask=$(ticketctl search --task "$TASK" --policy "$scheme" --seed "$s" --out "$OUT" "${EXTRA[@]}")
        ticketctl finetune --task "$TASK" --seed "$s" --mask "$mask" --out "$OUT" "${EXTRA[@]}" ;;
      active)  # sequential by nature: member s is pushed away from the masks of members 1..s-1
        if [[ ${#active_priors[@]} -eq 0 ]]; then
          mask=$(ticketctl search --task "$TASK" --policy base --seed "$s" --out "$OUT" "${EXTRA[@]}")
        else
          mask=$(printf '%s\n' "${active_priors[@]}" |
                 ticketctl search --task "$TASK" --policy active --prior - --seed "$s" --out "$OUT" "${EXTRA[@]}")
        fi
        active_priors+=("$mask")
        ticketctl finetune --task "$TASK" --seed "$s" --mask "$mask" --out "$OUT" "${EXTRA[@]}" ;;
    esac >/dev/null
  done
done

logits=$(ls "$OUT"/"$TASK"-logits-dev-{dense,bagging,base,active,random}-s*.safetensors 2>/dev/null || true)
n=$(echo "$SEEDS" | wc -w)
# k-member ensembles: 5 as in the paper when there are more seeds, else n-1 so that there are several combinations
SIZE=${SIZE:-$(( n > 5 ? 5 : (n > 2 ? n - 1 : n) ))}
echo "## Table 1: $TASK dev"
echo "$logits" | ticketctl stats - --by policy --size "$SIZE" --format markdown --plot "$REPORT/fig3-gain.png"
for scheme in $SCHEMES; do
  members=$(ls "$OUT"/"$TASK"-logits-dev-"$scheme"-s*.safetensors 2>/dev/null || true)
  [[ $(echo "$members" | wc -w) -ge 2 ]] || continue
  echo; echo "## Diversity: $scheme"
  echo "$members" | ticketctl diversity - --format markdown
done
masks=$(ls "$OUT"/"$TASK"-mask-*.safetensors 2>/dev/null || true)
if [[ $(echo "$masks" | wc -w) -ge 2 ]]; then
  echo; echo "## Figure 4: IoU of surviving weights"
  echo "$masks" | ticketctl iou - --format markdown --plot "$REPORT/fig4-iou.png"
fi
