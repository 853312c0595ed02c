#!/usr/bin/env bash
# Issue 26's principal evidence: the shared-arms, annealed, level-checked claims on legal, French and code, one study
# per domain, run in resumable blocks on one GPU (benchmarks/RESULTS.md, "Issue 26": the plan and its cost).
#
#   bash scripts/gpu_claims_wsd.sh MODEL [K] [DOMAINS]     # e.g. /tmp/smollm2/smollm2.gguf 12 "legal french code"
#
# Each domain's study lives in runs/gpu-claims-<domain>.db; a study missing there starts from its committed database
# (reports/<domain>-claims-wsd/study.db), so the same command adds only what is missing (seed-major: every arm and
# LR of seed 0 first, grid extensions as they are decided). French and code are fetched corpora: the GPU machine has
# no network, so carry $CPT_HARNESS_CACHE/corpora/ built here first (`cpt-harness prepare sweeps/gpu-claims-french.yaml`).
# To stop early: `touch runs/STOP` (no new domain starts), then SIGINT the ablate (`pkill -INT -f "cpt_harness ablate"`):
# running trials are recorded as interrupted and rerun on resume. scripts/gpu_watch.sh brings the databases, logs and
# per-document results back (claims.tgz); then, here: cp the database to reports/<domain>-claims-wsd/study.db and
#   cpt-harness report sweeps/gpu-claims-<domain>.yaml --ablation --out reports/<domain>-claims-wsd
set -uf
MODEL=$1
K=${2:-12}
DOMAINS=${3:-legal french code}
mkdir -p runs
say() { echo "[claims-wsd] $(date -u +%T) $*" | tee -a runs/claims.log; }
for d in $DOMAINS; do
  [ -e runs/STOP ] && { say "stop asked: $d not started"; break; }
  db=runs/gpu-claims-$d.db
  committed=reports/$d-claims-wsd/study.db
  if [ ! -f "$db" ] && [ -f "$committed" ]; then cp "$committed" "$db"; say "$d: resuming $committed"; fi
  say "$d: start"
  python3 -m cpt_harness ablate "sweeps/gpu-claims-$d.yaml" --gpus 0 --trials-per-gpu "$K" --set "model.name=$MODEL" \
      >>"runs/claims-$d.log" 2>&1
  say "$d: rc=$?"
done
