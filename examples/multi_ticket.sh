#!/usr/bin/env bash
# Multi-Ticket Ensemble with the default model: the paper's schemes (BASELINE = dense, BAGGING, BASE-LT, ACTIVE-LT,
# RANDOM-LT), then Table 1 (single vs k-member ensembles, t-tests), Table 2 (diversity), Figure 3 (ensemble gain vs
# members) and Figure 4 (mask IoU), written as a markdown report with its figures.
#
#   examples/multi_ticket.sh                       # MRPC, seeds 1-3, schemes dense random base, full training
#   examples/multi_ticket.sh --quick               # MRPC, dense and RANDOM-LT, 3 seeds, the full training set:
#                                                  # finetunes of 2 epochs, IMP rounds of 1; under 30 min on 2 cores.
#                                                  # A speed preset: it shows the pipeline runs, not that the
#                                                  # method works (README, "The --quick preset")
#   TASKS="mrpc stsb" SEEDS="$(seq 1 20)" SCHEMES="dense bagging base active random" examples/multi_ticket.sh
#
# Environment: TASKS, SEEDS, SCHEMES, SEED_GROUPS (the protocol's groups), SIZE (k), ARGS (extra options for every step, e.g. "--model DIR"), OUT (artifacts, default runs-multi; runs-quick with --quick), REPORT (default report). Every step is skipped
# when its artifact exists already, so the script can be rerun after an interruption.
set -euo pipefail
QUICK=
[[ "${1:-}" == "--quick" ]] && QUICK=1
if [[ -n "$QUICK" ]]; then
  TASKS=${TASKS:-mrpc}
  SCHEMES=${SCHEMES:-"dense random"}
  EXTRA=()
  FINETUNE=(--epochs 2)  # one epoch left the training loss at the label entropy (0.59 vs 0.63): underfit
  SEARCH=(--epochs 1)    # IMP rounds of one epoch: the masks come mostly from the pretrained magnitudes
  OUT=${OUT:-runs-quick}
  REPORT=${REPORT:-report-quick}
else
  TASKS=${TASKS:-mrpc}
  SCHEMES=${SCHEMES:-"dense random base"}
  EXTRA=()
  FINETUNE=()
  SEARCH=()
  OUT=${OUT:-runs-multi}  # its own folder: other examples' artifacts never join its tables
  REPORT=${REPORT:-report}
fi
SEEDS=${SEEDS:-"1 2 3"}
# shellcheck disable=SC2206  # ARGS: extra ticketctl options, word-split on purpose (e.g. ARGS="--model DIR")
EXTRA+=(${ARGS:-})
mkdir -p "$REPORT"
md="$REPORT/report.md"
start=$(date +%s)

run_task() {
  local task=$1 active_priors=() s scheme mask
  for s in $SEEDS; do
    for scheme in $SCHEMES; do
      case $scheme in
        dense)   ticketctl finetune --task "$task" --seed "$s" --out "$OUT" "${EXTRA[@]}" "${FINETUNE[@]}" ;;
        bagging) ticketctl finetune --task "$task" --seed "$s" --bagging 0.9 --out "$OUT" "${EXTRA[@]}" "${FINETUNE[@]}" ;;
        base|random)
          mask=$(ticketctl search --task "$task" --policy "$scheme" --seed "$s" --out "$OUT" "${EXTRA[@]}" "${SEARCH[@]}")
          ticketctl finetune --task "$task" --seed "$s" --mask "$mask" --out "$OUT" "${EXTRA[@]}" "${FINETUNE[@]}" ;;
        active)  # sequential by nature: member s is pushed away from the masks of members 1..s-1
          if [[ ${#active_priors[@]} -eq 0 ]]; then  # the first member: plain IMP, recorded as active
            mask=$(ticketctl search --task "$task" --policy active --prior none --seed "$s" --out "$OUT" "${EXTRA[@]}" "${SEARCH[@]}")
          else
            mask=$(printf '%s\n' "${active_priors[@]}" |
                   ticketctl search --task "$task" --policy active --prior - --seed "$s" --out "$OUT" "${EXTRA[@]}" "${SEARCH[@]}")
          fi
          active_priors+=("$mask")
          ticketctl finetune --task "$task" --seed "$s" --mask "$mask" --out "$OUT" "${EXTRA[@]}" "${FINETUNE[@]}" ;;
      esac >/dev/null
    done
  done
}

report_task() {
  local task=$1 logits n size scheme members masks
  # Only this configuration's artifacts: the config hash is in the name, so select by the run's own outputs.
  logits=$(for s in $SEEDS; do for scheme in $SCHEMES; do
    ls -t "$OUT"/"$task"-logits-dev-"$scheme"-s"$s"-*.safetensors 2>/dev/null | head -1; done; done)
  n=$(echo "$SEEDS" | wc -w)
  # The paper's protocol: 2 groups of seeds (in seed order) when they split evenly with k members each, else 1.
  groups=${SEED_GROUPS:-$(( n % 2 == 0 && n >= 10 ? 2 : 1 ))}
  size=${SIZE:-$(( n / groups > 5 ? 5 : (n / groups > 2 ? n / groups - 1 : n / groups) ))}  # 5 as in the paper
  echo "## $task"
  echo
  first=$(echo "$logits" | head -1)
  python3 - "$first" <<'PY'
import sys
from ticketctl.store.artifacts import read_artifact
import numpy as np
labels = read_artifact(sys.argv[1]).tensors.get("labels")
if labels is not None and labels.dtype.kind in "iu":
    print(f"Majority-class rate on dev: {np.bincount(labels).max() / len(labels):.4f} ({len(labels)} examples).")
PY
  echo
  echo "### Table 1: $task dev (k = $size, $groups seed group(s); calibrated test, the paper's t-test beside it)"
  echo
  echo "$logits" | ticketctl stats - --by policy --size "$size" --groups "$groups" --format markdown \
    --plot "$REPORT/$task-fig3-gain.png"
  echo
  echo "![Figure 3: ensemble gain over dense vs members]($task-fig3-gain.png)"
  for scheme in $SCHEMES; do
    members=$(echo "$logits" | grep -- "-logits-dev-$scheme-" || true)
    [[ $(echo "$members" | wc -w) -ge 2 ]] || continue
    echo; echo "### Table 2: diversity of $scheme members ($task)"; echo
    echo "$members" | ticketctl diversity - --format markdown
  done
  masks=$(for f in $logits; do ticketctl show --json "$f" | python3 -c \
    'import json,sys; [print(p["path"]) for p in json.load(sys.stdin).get("parents") or [] if p["kind"] == "mask"]'; done)
  if [[ $(echo "$masks" | wc -w) -ge 2 ]]; then
    echo; echo "### Figure 4: IoU of surviving weights ($task)"; echo
    echo "$masks" | ticketctl iou - --format markdown --plot "$REPORT/$task-fig4-iou.png"
    echo; echo "![Figure 4: mask IoU]($task-fig4-iou.png)"
  fi
  echo
}

{
  echo "# Multi-Ticket Ensemble report${QUICK:+ (--quick)}"
  echo
  "$(dirname "$0")/machine.sh"
  echo
  echo "Seeds: $SEEDS. Schemes: $SCHEMES. Options: ${EXTRA[*]:-paper defaults}; finetunes ${FINETUNE[*]:-at the defaults}; searches ${SEARCH[*]:-at the defaults} (model: all-MiniLM-L6-v2 unless --model is given)."
  echo
} > "$md"
for task in $TASKS; do
  run_task "$task"
  report_task "$task" >> "$md"
done
echo "Wall time: $(( $(date +%s) - start )) s on $(nproc) cores." >> "$md"
echo "$md"
