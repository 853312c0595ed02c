#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md (parallel trials), reports/gpu-legal and reports/gpu-ablation, in one
# go on a machine with 2 GPUs (each step's outputs land in OUTDIR as soon as it ends):
#
#   bash benchmarks/gpu_runs.sh MODEL OUTDIR      # MODEL: builtin:smollm2-135m-instruct, or a local .gguf
#
# 1. benchmarks/parallel.py: trials/hour for K = 1, 2, 4, 8 trials on GPU 0, then the best K on GPUs 0 and 1.
# 2. At once, on separate GPUs: the sweep sweeps/gpu-legal.yaml on GPU 0 (6 trials at a time, timed against
#    the 8-minute goal) and the ablation sweeps/gpu-ablation.yaml on GPU 1 (10 at a time; healing first).
#    CUDA_VISIBLE_DEVICES keeps each command's own work (setup, base losses, healing) on its GPU.
set -u
MODEL=$1
OUT=$2
mkdir -p "$OUT"
step() { echo "[gpu-runs] $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }

step "parallel benchmark"
python3 benchmarks/parallel.py sweeps/gpu-legal.yaml --ks 1,2,4,8 --gpus 0,1 --steps 60 --waves 2 \
    --set "model.name=$MODEL" --out "$OUT/parallel.json" >"$OUT/parallel.log" 2>&1
step "parallel benchmark: rc=$?"
tar czf "$OUT/parallel-worker-logs.tgz" /tmp/cpt-bench-parallel-*/runs/*/workers 2>/dev/null

rm -f runs/gpu-legal.db runs/gpu-ablation.db
step "sweep on GPU 0, ablation on GPU 1"
(
    start=$(date +%s)
    CUDA_VISIBLE_DEVICES=0 python3 -m harness sweep sweeps/gpu-legal.yaml --gpus 0 --trials-per-gpu 6 \
        --set "model.name=$MODEL" >"$OUT/sweep.log" 2>&1
    step "sweep: rc=$? after $(($(date +%s) - start)) s"
    cp runs/gpu-legal.db "$OUT/gpu-legal.db"
    tar czf "$OUT/gpu-legal-runs.tgz" --exclude=adapter runs/gpu-legal 2>/dev/null
) &
(
    start=$(date +%s)
    CUDA_VISIBLE_DEVICES=1 python3 -m harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 \
        --set "model.name=$MODEL" >"$OUT/ablation.log" 2>&1
    step "ablation: rc=$? after $(($(date +%s) - start)) s"
    cp runs/gpu-ablation.db "$OUT/gpu-ablation.db"
    tar czf "$OUT/gpu-ablation-runs.tgz" --exclude=adapter runs/gpu-legal-ablation 2>/dev/null
) &
wait
step "done"
touch "$OUT/DONE"
