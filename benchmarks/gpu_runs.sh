#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md (parallel trials), reports/gpu-legal and reports/gpu-ablation, in one
# go on a machine with 2 GPUs (each step's outputs land in OUTDIR as soon as it ends):
#
#   bash benchmarks/gpu_runs.sh MODEL OUTDIR      # MODEL: builtin:smollm2-135m-instruct, or a local .gguf
#   STEPS="claims" bash benchmarks/gpu_runs.sh MODEL OUTDIR     # only the ablations of the other two claims
#
# STEPS (default "bench main"):
#   bench   benchmarks/parallel.py: trials/hour for K = 1, 2, 4, 8 trials on GPU 0, then the best K on GPUs 0, 1.
#   main    at once, on separate GPUs: the sweep sweeps/gpu-legal.yaml on GPU 0 (6 trials at a time, timed against
#           the 8-minute goal) and the default ablation sweeps/gpu-ablation.yaml on GPU 1 (10 at a time).
#   claims  at once: the ablation of the embedding-LR ratio {0.1, 1.0} on GPU 0 and of rsLoRA {on, off} at
#           r = 256 on GPU 1, each in its own study (sweeps/gpu-ablation.yaml with ablation.factors set).
# CUDA_VISIBLE_DEVICES keeps each command's own work (setup, base losses, healing) on its GPU.
set -u
MODEL=$1
OUT=$2
STEPS=${STEPS:-bench main}
mkdir -p "$OUT"
step() { echo "[gpu-runs] $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }

# one command on one GPU: GPU NAME COMMAND...; its log, study database and W&B runs (no adapters) land in OUT
on_gpu() {
    local gpu=$1 name=$2 start
    shift 2
    start=$(date +%s)
    CUDA_VISIBLE_DEVICES=$gpu "$@" --set "model.name=$MODEL" >"$OUT/$name.log" 2>&1
    step "$name: rc=$? after $(($(date +%s) - start)) s"
}

if [[ " $STEPS " == *" bench "* ]]; then
    step "parallel benchmark"
    python3 benchmarks/parallel.py sweeps/gpu-legal.yaml --ks 1,2,4,8 --gpus 0,1 --steps 60 --waves 2 \
        --set "model.name=$MODEL" --out "$OUT/parallel.json" >"$OUT/parallel.log" 2>&1
    step "parallel benchmark: rc=$?"
    tar czf "$OUT/parallel-worker-logs.tgz" /tmp/cpt-bench-parallel-*/runs/*/workers 2>/dev/null
fi

if [[ " $STEPS " == *" main "* ]]; then
    rm -f runs/gpu-legal.db runs/gpu-ablation.db
    step "sweep on GPU 0, ablation on GPU 1"
    on_gpu 0 sweep python3 -m harness sweep sweeps/gpu-legal.yaml --gpus 0 --trials-per-gpu 6 &
    on_gpu 1 ablation python3 -m harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 &
    wait
    cp runs/gpu-legal.db runs/gpu-ablation.db "$OUT/"
    tar czf "$OUT/main-runs.tgz" --exclude=adapter runs/gpu-legal runs/gpu-legal-ablation 2>/dev/null
fi

if [[ " $STEPS " == *" claims "* ]]; then
    step "embedding-LR ratio ablation on GPU 0, rsLoRA ablation on GPU 1"
    on_gpu 0 ablation-ratio python3 -m harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 \
        --set "ablation.factors=[embedding_lr_ratio]" --set ablation.study_name=gpu-legal-ablation-ratio \
        --set study.storage=sqlite:///runs/gpu-ablation-ratio.db &
    on_gpu 1 ablation-rslora python3 -m harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 \
        --set "ablation.factors=[rslora]" --set ablation.study_name=gpu-legal-ablation-rslora \
        --set study.storage=sqlite:///runs/gpu-ablation-rslora.db &
    wait
    cp runs/gpu-ablation-ratio.db runs/gpu-ablation-rslora.db "$OUT/"
    tar czf "$OUT/claims-runs.tgz" --exclude=adapter runs/gpu-legal-ablation-ratio runs/gpu-legal-ablation-rslora \
        2>/dev/null
fi
step "done"
touch "$OUT/DONE"
