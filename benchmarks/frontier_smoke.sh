#!/usr/bin/env bash
# The frontier design on a GPU, in one go on a 2-GPU machine (each step's outputs land in OUTDIR):
#
#   bash benchmarks/frontier_smoke.sh MODEL OUTDIR      # MODEL: builtin:smollm2-135m-instruct, or a local .gguf
#
# GPU 0, smoke: one factor (gate_proj), 2 LRs x 2 seeds = 8 trials of 60 steps with sweeps/gpu-ablation.yaml's
#   eval (Brown + SOTU, 131072 tokens each, general_kl, per-document results), then `cpt-harness report --ablation`
#   read back. Verdicts need 3 seeds: with 2 every claim is INCONCLUSIVE by design; the run checks the machinery.
# GPU 1, cost: the default design (gate_proj x embeddings) at 2 LRs x 1 seed = 8 trials of the full 200 steps,
#   8 at a time: the GPU-seconds a trial of the claims runs costs with the larger eval and the KL pass.
# Both use a 60-step heal (built once, shared through the cache) to keep the run short; the claims runs use 300.
set -u
MODEL=$1
OUT=$2
mkdir -p "$OUT" runs
step() { echo "[frontier] $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }
COMMON=(--set "model.name=$MODEL" --set model.heal.steps=60 --set tracking.wandb.mode=offline)
SMOKE=(--set "ablation.factors=[gate_proj]" --set ablation.seeds=2 --set "ablation.learning_rates=[2.5e-4,1e-3]"
       --set train.max_steps=60 --set train.eval_every=20 --set ablation.study_name=smoke-frontier
       --set study.storage=sqlite:///runs/smoke-frontier.db)
COST=(--set ablation.seeds=1 --set "ablation.learning_rates=[2.5e-4,1e-3]" --set ablation.study_name=cost-frontier
      --set study.storage=sqlite:///runs/cost-frontier.db)
rm -f runs/smoke-frontier.db runs/cost-frontier.db

step "smoke on GPU 0, cost batch on GPU 1"
start=$(date +%s)
CUDA_VISIBLE_DEVICES=0 python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 8 \
    "${COMMON[@]}" "${SMOKE[@]}" >"$OUT/smoke.log" 2>&1 &
smoke=$!
sleep 20  # the smoke's parent takes the heal's build lock first; the cost batch finds the healed base cached
CUDA_VISIBLE_DEVICES=1 python3 -m cpt_harness ablate sweeps/gpu-ablation.yaml --gpus 0 --trials-per-gpu 8 \
    "${COMMON[@]}" "${COST[@]}" >"$OUT/cost.log" 2>&1 &
cost=$!
wait $smoke; step "smoke: rc=$? after $(($(date +%s) - start)) s"
python3 -m cpt_harness report sweeps/gpu-ablation.yaml --ablation "${COMMON[@]}" "${SMOKE[@]}" \
    --out "$OUT/smoke-report" >"$OUT/smoke-report.log" 2>&1
step "smoke report: rc=$?"
wait $cost; step "cost: rc=$? after $(($(date +%s) - start)) s"
python3 -m cpt_harness report sweeps/gpu-ablation.yaml --ablation "${COMMON[@]}" "${COST[@]}" \
    --out "$OUT/cost-report" >"$OUT/cost-report.log" 2>&1
step "cost report: rc=$?"
python3 - "$OUT" <<'PY' >>"$OUT/progress.log" 2>&1
import json, sys
import optuna
for name in ("smoke-frontier", "cost-frontier"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///runs/{name}.db")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        print(name, "no complete trial"); continue
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    timings = [t.user_attrs["timings"] for t in done]
    print(json.dumps({"study": name, "complete": len(done), "failed": sum(t.state.name == "FAIL" for t in study.trials),
                      "span_s": round(span, 1), "gpu_s_per_trial": round(span / len(done), 1),
                      "mean_timings_s": {k: round(sum(t.get(k, 0) for t in timings) / len(timings), 1)
                                         for k in ("load", "train", "eval", "log", "save")},
                      "peak_memory_gb": max(t.user_attrs.get("peak_memory_gb", 0) for t in done),
                      "general_kl": [round(t.user_attrs.get("general_kl", -1), 5) for t in done]}))
PY
for r in smoke-report cost-report; do tar czf "$OUT/$r.tgz" -C "$OUT" "$r" && rm -rf "${OUT:?}/$r"; done
step "done"
