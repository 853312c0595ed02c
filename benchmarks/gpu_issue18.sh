#!/usr/bin/env bash
# Issue 18's GPU benchmarks (and issue 13's missing legal trials) in one block on a 4-GPU host, phase by phase;
# each phase's results land in OUT as soon as it ends (benchmarks/RESULTS.md, issue 18, says what each measures):
#
#   bash benchmarks/gpu_issue18.sh MODEL OUT          # MODEL: a local SmolLM2 .gguf; OUT e.g. runs/bench
#   PHASES="masters" bash benchmarks/gpu_issue18.sh MODEL OUT
#
# PHASES, in this order (`touch runs/STOP` ends the run before the next phase). Default "masters scaling-pool
# ktable-pool", what block 5 ran (benchmarks/RESULTS.md); block 4 ran "throughput claims pool+parallel scaling":
#   masters        the harness with train.MasterAdamW against raw Unsloth, 1B shape, 3 repeats at once on GPUs 0-2;
#                  tests/model/test_unsloth_backend.py on GPU 3 meanwhile (parity, audit dtypes).
#   throughput     1B shape: 3 repeats at once on GPUs 0-2 of harness-unsloth, raw-unsloth, raw-unsloth-fp32emb and
#                  raw-unsloth-masters (each repeat on its own card, so each ratio compares a card with itself);
#                  the raw loop profiled on GPU 3 meanwhile. Needs no model file (random-init shapes).
#   claims         scripts/gpu_claims.sh MODEL 0,1,2,3 5: the claims' studies resume (issue 13); complete ones skip.
#   pool+parallel  at once, one GPU each: GPU 0 a cold 12-trial sweeps/gpu-legal.yaml sweep (8 workers of its
#                  own); GPU 1 `cpt-harness pool` (8 workers), and once they have imported, the same sweep handed
#                  to it (warm); GPUs 2 and 3 the K-trials-per-GPU table, K = 1..4 and K = 5..8. The four share
#                  the host's CPUs (the results say so).
#   scaling        benchmarks.parallel at the best K of the table on GPU 0, then on GPUs 0-3 (alone on the host).
#   scaling2       the same on GPUs 0 and 1.
#   scaling-pool   the scaling runs on warm pools (benchmarks.parallel --pool): K=8 on GPU 0, then GPUs 0-3; then
#                  K=8 on GPU 0 and GPUs 0, 1 (each run's workers imported before its clock starts).
#   ktable-pool    the K-trials-per-GPU table on warm pools, K = 1..8: K = 1 then 8 on GPU 0, 2 then 7 on GPU 1,
#                  3 then 6 on GPU 2, 4 then 5 on GPU 3 (the four GPUs at once; about 5.5 minutes).
# Result files are named CARD-DATE-* (CARD default h200; h200x4 for the 4-GPU scaling).
set -u
MODEL=$1
OUT=$2
PHASES=${PHASES:-masters scaling-pool ktable-pool}
CARD=${CARD:-h200}
DATE=$(date -u +%F)
mkdir -p "$OUT" runs
say() { echo "[issue18] $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }
has() { [[ " $PHASES " == *" $1 "* ]] && [ ! -e runs/STOP ]; }
MODES=harness-unsloth,raw-unsloth,raw-unsloth-fp32emb,raw-unsloth-masters

if has masters; then
  say "masters: harness-unsloth vs raw-unsloth, 3 repeats on GPUs 0-2; unsloth backend tests on GPU 3"
  for r in 1 2 3; do
    CUDA_VISIBLE_DEVICES=$((r - 1)) python3 -m benchmarks.throughput --shapes llama-3.2-1b \
        --modes harness-unsloth,raw-unsloth --out "$OUT/$CARD-$DATE-throughput-1b-masters-r$r.json" \
        >"$OUT/masters-r$r.log" 2>&1 &
  done
  CUDA_VISIBLE_DEVICES=3 python3 -m pytest -q tests/model/test_unsloth_backend.py >"$OUT/unsloth-backend-tests.log" 2>&1
  wait
  python3 -m benchmarks.medians "$OUT"/$CARD-$DATE-throughput-1b-masters-r*.json >"$OUT/masters-medians.md" 2>&1
  say "masters: done; tests: $(tail -n 1 "$OUT/unsloth-backend-tests.log")"; cat "$OUT/masters-medians.md"
fi

if has throughput; then
  say "throughput: 3 repeats on GPUs 0-2, raw profile on GPU 3"
  for r in 1 2 3; do
    CUDA_VISIBLE_DEVICES=$((r - 1)) python3 -m benchmarks.throughput --shapes llama-3.2-1b --modes "$MODES" \
        --out "$OUT/$CARD-$DATE-throughput-1b-emb-r$r.json" >"$OUT/throughput-r$r.log" 2>&1 &
  done
  CUDA_VISIBLE_DEVICES=3 python3 -m benchmarks.profile_step --backend raw-unsloth --shape llama-3.2-1b --steps 30 \
      >"$OUT/$CARD-$DATE-profile-1b-raw.txt" 2>&1
  wait
  python3 -m benchmarks.medians "$OUT"/$CARD-$DATE-throughput-1b-emb-r*.json >"$OUT/throughput-medians.md" 2>&1
  say "throughput: done"; cat "$OUT/throughput-medians.md"
fi

if has claims; then
  for _ in $(seq 120); do [ -s "$MODEL" ] && break; sleep 2; done  # the model's second part may still be arriving
  say "claims: start"
  bash scripts/gpu_claims.sh "$MODEL" 0,1,2,3 5 >"$OUT/claims.out" 2>&1
  say "claims: done"
fi

if has pool+parallel; then
  SWEEP=(sweeps/gpu-legal.yaml --set "model.name=$MODEL")
  say "pool+parallel: cold sweep GPU 0, pool GPU 1, K=1..4 GPU 2, K=5..8 GPU 3"
  python3 -m benchmarks.pool_startup "${SWEEP[@]}" --cold --gpus 0 --trials-per-gpu 8 \
      --set study.name=bench-cold --set study.storage=sqlite:///runs/bench-pool-cold.db \
      --out "$OUT/$CARD-$DATE-pool-startup-cold.json" >"$OUT/pool-cold.log" 2>&1 &
  python3 -m benchmarks.parallel "${SWEEP[@]}" --ks 1,2,3,4 --gpus 2 \
      --out "$OUT/$CARD-$DATE-parallel-k1-4.json" >"$OUT/parallel-k1-4.log" 2>&1 &
  python3 -m benchmarks.parallel "${SWEEP[@]}" --ks 5,6,7,8 --gpus 3 \
      --out "$OUT/$CARD-$DATE-parallel-k5-8.json" >"$OUT/parallel-k5-8.log" 2>&1 &
  python3 -m cpt_harness pool --gpus 1 --trials-per-gpu 8 >"$OUT/pool.log" 2>&1 &
  logs=${CPT_HARNESS_CACHE:-$HOME/.cache/cpt-harness}/pool/logs
  for _ in $(seq 150); do
    [ "$(grep -h 'imported in' "$logs"/*.log 2>/dev/null | wc -l)" -ge 8 ] && break; sleep 2
  done
  say "pool: $(grep -h 'imported in' "$logs"/*.log 2>/dev/null | wc -l) workers imported"
  python3 -m benchmarks.pool_startup "${SWEEP[@]}" --warm \
      --set study.name=bench-warm --set study.storage=sqlite:///runs/bench-pool-warm.db \
      --out "$OUT/$CARD-$DATE-pool-startup-warm.json" >"$OUT/pool-warm.log" 2>&1
  python3 -m cpt_harness pool --stop >>"$OUT/pool.log" 2>&1
  cp "$logs"/*.log "$OUT/" 2>/dev/null
  wait
  say "pool+parallel: done"
fi

best_k() {
  python3 - "$OUT"/$CARD-$DATE-parallel-k*.json <<'PY'
import json, sys
runs = [r for f in sys.argv[1:] for r in json.load(open(f))["runs"] if r.get("trials_per_hour")]
print(max(runs, key=lambda r: r["trials_per_hour"])["k"] if runs else 8)
PY
}

if has scaling; then
  K=$(best_k)
  say "scaling: K=$K on GPU 0, then on GPUs 0-3"
  python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --set "model.name=$MODEL" --ks "$K" --gpus 0,1,2,3 \
      --out "$OUT/${CARD}x4-$DATE-scaling.json" >"$OUT/scaling4.log" 2>&1
  say "scaling: done"
fi

if has scaling2; then
  K=$(best_k)
  say "scaling2: K=$K on GPU 0, then on GPUs 0, 1"
  python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --set "model.name=$MODEL" --ks "$K" --gpus 0,1 \
      --out "$OUT/${CARD}x2-$DATE-scaling.json" >"$OUT/scaling2.log" 2>&1
  say "scaling2: done"
fi
if has scaling-pool; then
  say "scaling-pool: K=8 on warm pools, GPU 0 then GPUs 0-3"
  python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --set "model.name=$MODEL" --ks 8 --gpus 0,1,2,3 --pool \
      --out "$OUT/${CARD}x4-$DATE-scaling-pool.json" >"$OUT/scaling4-pool.log" 2>&1
  has scaling-pool && python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --set "model.name=$MODEL" --ks 8 \
      --gpus 0,1 --pool --out "$OUT/${CARD}x2-$DATE-scaling-pool.json" >"$OUT/scaling2-pool.log" 2>&1
  say "scaling-pool: done"
fi
if has ktable-pool; then
  say "ktable-pool: K=1..8 on warm pools, two K per GPU"
  gpu=0
  for ks in 1,8 2,7 3,6 4,5; do
    python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --set "model.name=$MODEL" --ks "$ks" --gpus "$gpu" --pool \
        --out "$OUT/$CARD-$DATE-parallel-pool-k${ks/,/-}.json" >"$OUT/ktable-$gpu.log" 2>&1 &
    gpu=$((gpu + 1))
  done
  wait
  say "ktable-pool: done"
fi
say "all phases done"
