#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md (parallel trials) and reports/gpu-ablation* in one go on a machine
# with 2 GPUs (each step's outputs land in OUTDIR as soon as it ends):
#
#   bash benchmarks/gpu_runs.sh MODEL OUTDIR      # MODEL: builtin:smollm2-135m-instruct, or a local .gguf
#   STEPS="bench" bash benchmarks/gpu_runs.sh MODEL OUTDIR     # only the parallel-trials benchmark
#
# STEPS (default "smoke heal ablate bench"):
#   smoke   two 5-step unsloth trials in one process on GPU 0: the second must start from a copy of the kept
#           base (model.keep_loaded). If it does not complete, every later step runs with model.keep_loaded=false.
#   heal    at the same time on GPU 1: python3 -m benchmarks.heal_check heals the base with 4 candidate settings and
#           picks the one that lowers held-out general loss most; the ablations use it (and find it cached).
#   ablate  at once: the default ablation (gate_proj x embeddings) on GPU 0; the embedding-LR ratio {0.1, 1.0}
#           and rsLoRA {on, off} at r = 256 ablations on GPU 1, each in its own study. 10 trials per study at a time.
#   bench   python3 -m benchmarks.parallel: trials/hour for K = 1, 2, 4, 8 trials on GPU 0, then the best K on GPUs 0, 1
#           (KS=8 WAVES=6: only K = 8, six trials per worker, so the workers' start-up weighs less).
#   startup python3 -m benchmarks.startup: import time of the unsloth backend with 1, 8 and 16 processes started at once
#           sharing ./unsloth_compiled_cache, then 16 with a compile cache each (cProfile of one process each time).
#   main    (the 2026-11-27 runs) the sweep sweeps/gpu-legal.yaml on GPU 0 (6 at a time) next to the default
#           ablation on GPU 1 (10 at a time).
# CUDA_VISIBLE_DEVICES keeps each command's own work (setup, base losses, healing) on its GPU.
set -u
MODEL=$1
OUT=$2
STEPS=${STEPS:-smoke heal ablate bench}
mkdir -p "$OUT" runs
step() { echo "[gpu-runs] $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
KEEP=()        # --set model.keep_loaded=false if the smoke run says so
HEAL=()        # --set overrides of the chosen heal

# one command on one GPU: GPU NAME COMMAND...; its log lands in OUT
on_gpu() {
    local gpu=$1 name=$2 start
    shift 2
    start=$(date +%s)
    CUDA_VISIBLE_DEVICES=$gpu "$@" --set "model.name=$MODEL" "${KEEP[@]}" "${HEAL[@]}" >"$OUT/$name.log" 2>&1
    step "$name: rc=$? after $(($(date +%s) - start)) s"
}

if has smoke || has heal; then
    step "smoke (GPU 0), heal check (GPU 1)"
    if has smoke; then
        rm -f runs/smoke.db
        on_gpu 0 smoke python3 -m cpt_harness sweep sweeps/gpu-legal.yaml --n-trials 2 --set train.max_steps=5 \
            --set train.eval_every=5 --set study.name=smoke --set study.storage=sqlite:///runs/smoke.db \
            --set study.keep_adapters=none --set tracking.wandb.mode=disabled &
    fi
    if has heal; then
        on_gpu 1 heal-check python3 -m benchmarks.heal_check sweeps/gpu-ablation.yaml --out "$OUT/heal-check.json" \
            --args-out "$OUT/heal-args.txt" --candidate builtin:austen,300,2e-4 --candidate builtin:austen,100,1e-4 \
            --candidate builtin:brown,100,1e-4 --candidate builtin:brown,300,2e-4 &
    fi
    wait
    if has smoke; then
        python3 - >"$OUT/smoke.txt" 2>&1 <<'PY'
import optuna
study = optuna.load_study(study_name="smoke", storage="sqlite:///runs/smoke.db")
loads = [t.user_attrs.get("base_load") for t in study.trials if t.state.name == "COMPLETE"]
print("base_load of the complete trials:", loads)
raise SystemExit(0 if loads == ["disk", "copy"] else 1)
PY
        if [[ $? -ne 0 ]]; then KEEP=(--set model.keep_loaded=false); fi
        step "smoke: $(cat "$OUT/smoke.txt") -> ${KEEP[*]:-keep_loaded on}"
    fi
    if [[ -s "$OUT/heal-args.txt" ]]; then
        while read -r line; do HEAL+=(--set "$line"); done <"$OUT/heal-args.txt"
    fi
    step "heal: ${HEAL[*]:-as in the config}"
fi

if has ablate; then
    rm -f runs/gpu-ablation.db runs/gpu-ablation-ratio.db runs/gpu-ablation-rslora.db
    step "default ablation on GPU 0; embedding-LR ratio and rsLoRA ablations on GPU 1"
    on_gpu 0 ablation python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 &
    on_gpu 1 ablation-ratio python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 \
        --set "ablation.factors=[embedding_lr_ratio]" --set ablation.study_name=gpu-legal-ablation-ratio \
        --set study.storage=sqlite:///runs/gpu-ablation-ratio.db &
    on_gpu 1 ablation-rslora python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 \
        --set "ablation.factors=[rslora]" --set ablation.study_name=gpu-legal-ablation-rslora \
        --set study.storage=sqlite:///runs/gpu-ablation-rslora.db &
    wait
    cp runs/gpu-ablation.db runs/gpu-ablation-ratio.db runs/gpu-ablation-rslora.db "$OUT/"
    tar czf "$OUT/ablate-runs.tgz" --exclude=adapter runs/gpu-legal-ablation runs/gpu-legal-ablation-ratio \
        runs/gpu-legal-ablation-rslora 2>/dev/null
fi

if has startup; then
    step "worker start-up probe"
    python3 -m benchmarks.startup --n 1,8,16 --profile "$OUT/startup-profile-shared.txt" --out "$OUT/startup.json" \
        >"$OUT/startup.log" 2>&1
    python3 -m benchmarks.startup --n 16 --own-compile-dir --profile "$OUT/startup-profile-own.txt" \
        --out "$OUT/startup.json" >>"$OUT/startup.log" 2>&1
    step "start-up probe: rc=$?"
fi

if has bench; then
    step "parallel benchmark"
    python3 -m benchmarks.parallel sweeps/gpu-legal.yaml --ks "${KS:-1,2,4,8}" --gpus 0,1 --steps 60 --waves "${WAVES:-2}" \
        --set "model.name=$MODEL" "${KEEP[@]}" --out "$OUT/parallel.json" >"$OUT/parallel.log" 2>&1
    step "parallel benchmark: rc=$?"
    tar czf "$OUT/parallel-worker-logs.tgz" /tmp/cpt-bench-parallel-*/runs/*/workers /tmp/cpt-bench-parallel-*/bench.db \
        2>/dev/null
fi

if has main; then
    rm -f runs/gpu-legal.db runs/gpu-ablation.db
    step "sweep on GPU 0, ablation on GPU 1"
    on_gpu 0 sweep python3 -m cpt_harness sweep sweeps/gpu-legal.yaml --gpus 0 --trials-per-gpu 6 &
    on_gpu 1 ablation python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 10 &
    wait
    cp runs/gpu-legal.db runs/gpu-ablation.db "$OUT/"
    tar czf "$OUT/main-runs.tgz" --exclude=adapter runs/gpu-legal runs/gpu-legal-ablation 2>/dev/null
fi
step "done"
touch "$OUT/DONE"
