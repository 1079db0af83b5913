#!/usr/bin/env bash
# Multi-Ticket Ensemble with the default model: the paper's schemes (BASELINE = dense, BAGGING, BASE-LT, ACTIVE-LT,
# RANDOM-LT), then Table 1 (single vs k-member ensembles, tests), Table 2 (diversity), Figure 3 (ensemble gain vs
# members) and Figure 4 (mask IoU), written as a markdown report with its figures: one `ticketctl protocol` call.
#
#   examples/multi_ticket.sh                       # MRPC, seeds 1-3, schemes dense random base, full training
#   examples/multi_ticket.sh --quick               # MRPC, dense and RANDOM-LT, 3 seeds, the full training set:
#                                                  # finetunes of 2 epochs, IMP rounds of 1; under 30 min on 2 cores.
#                                                  # A speed preset: it shows the pipeline runs, not that the
#                                                  # method works (README "The `--quick` preset is a speed preset")
#   TASKS="mrpc stsb" SEEDS="$(seq 1 20)" SCHEMES="dense bagging base active random" examples/multi_ticket.sh
#
# Environment: TASKS, SEEDS, SCHEMES, SEED_GROUPS (the protocol's groups), SIZE (largest k), ARGS (extra options for
# `ticketctl protocol`, e.g. "--model DIR" or "--jobs 2 --threads 1" or "--executor slurm"), OUT (artifacts, default
# runs-multi: no other example's artifacts join its tables), REPORT (default report; REPORT/TASK with several tasks). --quick is the preset `ticketctl protocol --plan
# quick`. Finished members are reused, so the script can be rerun after an interruption; ARGS=--dry-run lists what
# is left to do.
set -euo pipefail
# shellcheck disable=SC2206  # ARGS: extra ticketctl options, word-split on purpose (e.g. ARGS="--model DIR")
EXTRA=(${ARGS:-})
if [[ "${1:-}" == "--quick" ]]; then
  # the named preset `--plan quick` (docs/protocol.md "The whole protocol in one command"); the environment still overrides it
  opts=(--plan quick)
  [[ -n "${TASKS:-}" ]] && for t in $TASKS; do opts+=(--task "$t"); done
  [[ -n "${SEEDS:-}" ]] && opts+=(--seeds "$(echo $SEEDS | tr ' ' ',')")
  [[ -n "${SCHEMES:-}" ]] && opts+=(--schemes "$(echo $SCHEMES | tr ' ' ',')")
  [[ -n "${SEED_GROUPS:-}" ]] && opts+=(--groups "$SEED_GROUPS")
  [[ -n "${SIZE:-}" ]] && opts+=(--size "$SIZE")
  [[ -n "${OUT:-}" ]] && opts+=(--out "$OUT")
  [[ -n "${REPORT:-}" ]] && opts+=(--report "$REPORT")
  exec ticketctl protocol "${opts[@]}" "${EXTRA[@]}"
fi
TASKS=${TASKS:-mrpc}
SCHEMES=${SCHEMES:-"dense random base"}
SEEDS=${SEEDS:-"1 2 3"}
n=$(echo "$SEEDS" | wc -w)
# The paper's protocol: 2 groups of seeds (in seed order) when they split evenly with k members each, else 1;
# k = 5 as in the paper, at most a group's seeds less one (so leaving a seed out leaves an ensemble: an interval).
groups=${SEED_GROUPS:-$(( n % 2 == 0 && n >= 10 ? 2 : 1 ))}
size=${SIZE:-$(( n / groups > 5 ? 5 : (n / groups > 2 ? n / groups - 1 : n / groups) ))}
tasks=()
for t in $TASKS; do tasks+=(--task "$t"); done   # several tasks: one report each, in REPORT/TASK
exec ticketctl protocol "${tasks[@]}" --seeds "$(echo $SEEDS | tr ' ' ',')" --schemes "$(echo $SCHEMES | tr ' ' ',')" \
  --groups "$groups" --size "$([[ $size -ge 2 ]] && echo "2-$size" || echo "$size")" --out "${OUT:-runs-multi}" \
  --report "${REPORT:-report}" "${EXTRA[@]}"
