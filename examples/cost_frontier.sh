#!/usr/bin/env bash
# Ensembles at equal inference cost on MRPC with the default model: dense members, RANDOM-LT tickets (30%
# unstructured: dense compute), and structured super tickets at 30% and 50% (physically smaller), plain and
# seed-perturbed (diverse), then Table 1 with costs, the accuracy-vs-cost frontier and its figure, member diversity
# and structured mask overlap.
#
#   examples/cost_frontier.sh            # seeds 1-6, 2-epoch finetunes, 1-epoch IMP rounds: ~90 min on 2 cores
#
# Environment: SEEDS, OUT (default runs-cost), REPORT (default report-cost), ARGS. Finished steps are reused, so the
# script can be rerun after an interruption, or with more seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3 4 5 6"}
OUT=${OUT:-runs-cost}
REPORT=${REPORT:-report-cost}
mkdir -p "$REPORT"
# shellcheck disable=SC2206
C=(--task mrpc --out "$OUT" ${ARGS:-})
FT=(--epochs 2)   # the quick setting of examples/multi_ticket.sh: 2-epoch finetunes ...
IMP=(--epochs 1)  # ... and 1-epoch IMP rounds
start=$(date +%s)
for s in $SEEDS; do
  ticketctl finetune "${C[@]}" "${FT[@]}" --seed "$s" >/dev/null
  mask=$(ticketctl search "${C[@]}" "${IMP[@]}" --policy random --seed "$s")
  ticketctl finetune "${C[@]}" "${FT[@]}" --seed "$s" --mask "$mask" >/dev/null
  # the structured search's dense finetune is the one above (same seed and config): reused
  for policy in base perturbed; do
    for m in $(ticketctl search "${C[@]}" "${FT[@]}" --method structured --policy "$policy" --sparsity 0.3,0.5 --seed "$s"); do
      ticketctl finetune "${C[@]}" "${FT[@]}" --seed "$s" --mask "$m" >/dev/null
    done
  done
  echo "seed $s done at $(( $(date +%s) - start )) s" >&2
done
logits=("$OUT"/mrpc-logits-dev-{dense,random,winning,winning-perturbed}-s*.safetensors)
{
  echo "## Table 1 with costs (k = 3)"
  ticketctl stats "${logits[@]}" --by scheme --size 3 --format markdown
  echo "## the frontier"
  ticketctl stats "${logits[@]}" --by scheme --cost --plot "$REPORT/cost_frontier.png" --format markdown
  for scheme in dense random winning winning-perturbed; do
    echo "## diversity: $scheme"
    for level in 30 50; do
      case $scheme in dense|random) [[ $level == 30 ]] || continue; files=("$OUT"/mrpc-logits-dev-"$scheme"-s*.safetensors) ;;
        *) files=(); for f in "$OUT"/mrpc-logits-dev-"$scheme"-s*.safetensors; do
             [[ $(ticketctl show --json "$f" | python -c "import json,sys; print(round(float(json.load(sys.stdin)['target_sparsity'])*100))") == "$level" ]] && files+=("$f"); done
           echo "### $level%" ;;
      esac
      ticketctl diversity "${files[@]}" --format markdown
    done
  done
  for policy in winning winning-perturbed; do
    for level in 30 50; do
      echo "## mask IoU: $policy $level%"
      ticketctl iou "$OUT"/mrpc-mask-"$policy"-"$level"pct-s*.safetensors --format markdown
    done
  done
  echo "elapsed: $(( $(date +%s) - start )) s"
} > "$REPORT/report.md"
cat "$REPORT/report.md"
