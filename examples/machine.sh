#!/usr/bin/env bash
# One line naming when and where a worked example's numbers were measured; the example scripts put it at the top
# of their reports, so a published table never needs a hand-written machine or date (issue #26).
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
amx=$(grep -q amx_tile /proc/cpuinfo 2>/dev/null && echo yes || echo no)
gpu=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
comp=$(python -c 'from ticketctl.store.identity import COMPUTATION; print(COMPUTATION)' 2>/dev/null || echo '?')
echo "Measured $(date -u +%Y-%m-%d) on ${cpu:-an unknown CPU} (AMX: $amx), $(nproc) cores${gpu:+, GPU $gpu}; ticketctl computation $comp."
