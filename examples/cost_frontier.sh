#!/usr/bin/env bash
# Ensembles at equal inference cost on MRPC with the default model: dense members, RANDOM-LT tickets (30%
# unstructured: dense compute), and structured super tickets at 30% and 50% (physically smaller), plain and
# seed-perturbed (diverse), then Table 1 with costs, the accuracy-vs-cost frontier and its figure, member diversity
# and structured mask overlap.
#
#   examples/cost_frontier.sh            # seeds 1-6, 2-epoch finetunes, 1-epoch IMP rounds: ~18 min per seed on 2 cores
#   REPORT_ONLY=1 SEEDS="1 2 3 4 5" examples/cost_frontier.sh    # only the tables, from finished artifacts
#
# Environment: SEEDS, SIZE (Table 1's k, default 3), OUT (default runs-cost), REPORT (default report-cost), ARGS. Finished steps are reused, so the
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
  [[ -n "${REPORT_ONLY:-}" ]] && break
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
logits=()
for s in $SEEDS; do logits+=("$OUT"/mrpc-logits-dev-{dense,random,winning,winning-perturbed}-s"$s"-*.safetensors); done
pick() {  # pick SCHEME [LEVEL]: the logits of that scheme (and structured level) for the seeds
  for f in "${logits[@]}"; do
    [[ $(basename "$f") == mrpc-logits-dev-"$1"-s* ]] || continue
    [[ -z "${2:-}" ]] || [[ $(ticketctl show --json "$f" | python -c "import json,sys; print(round(float(json.load(sys.stdin)['target_sparsity'])*100))") == "$2" ]] || continue
    echo "$f"
  done
}
{
  "$(dirname "$0")/machine.sh"
  echo
  echo "## Table 1 with costs (k = ${SIZE:-3})"
  ticketctl stats "${logits[@]}" --by scheme --size "${SIZE:-3}" --format markdown
  echo "## the frontier"
  ticketctl stats "${logits[@]}" --by scheme --cost --plot "$REPORT/cost_frontier.png" --format markdown
  for scheme in dense random; do
    echo "## diversity: $scheme"
    pick "$scheme" | ticketctl diversity - --format markdown
  done
  for scheme in winning winning-perturbed; do
    for level in 30 50; do
      echo "## diversity: $scheme $level%"
      pick "$scheme" "$level" | ticketctl diversity - --format markdown
    done
  done
  for policy in winning winning-perturbed; do
    for level in 30 50; do
      echo "## mask IoU: $policy $level%"
      for s in $SEEDS; do ls "$OUT"/mrpc-mask-"$policy"-"$level"pct-s"$s"-*.safetensors; done | ticketctl iou - --format markdown
    done
  done
  echo "elapsed: $(( $(date +%s) - start )) s"
} > "$REPORT/report.md"
cat "$REPORT/report.md"
