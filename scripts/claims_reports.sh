#!/usr/bin/env bash
# Regenerate the claims reports (reports/<domain>-claims*/) from their committed study databases:
#
#   bash scripts/claims_reports.sh [RUNS]
#
# RUNS: a GPU block's runs/ folder brought back (scripts/gpu_watch.sh's claims.tgz and wandb.tgz unpacked), whose
# trial folders add their per-document results to each folder's evals.npz and whose W&B offline run files are
# read back into wandb-summaries.json (checked against the study database). Without it, every report is rebuilt
# from what is committed.
set -euo pipefail
RUNS=${1:-}
PY=${PYTHON:-python3}
report() {  # folder, config, study name, extra --set overrides...
  local dir=reports/$1 cfg=$2 study=$3
  shift 3
  [ -f "$dir/study.db" ] || { echo "[claims] $dir: no study.db, skipped"; return; }
  local sets=(--set "study.storage=sqlite:///$dir/study.db" --set "ablation.study_name=$study")
  [ -n "$RUNS" ] && sets+=(--set "study.output_dir=$RUNS")
  # the block's trial runs, looked for before the report (which logs its own summary run beside them)
  local trial_runs=
  [ -n "$RUNS" ] && trial_runs=$(find "$RUNS/$study/wandb" -name '*.wandb' ! -name '*-summary-*' -print -quit 2>/dev/null || true)
  "$PY" -m cpt_harness report "$cfg" --ablation "${sets[@]}" "$@" --out "$dir" | grep -A4 "^verdicts" || true
  if [ -n "$trial_runs" ]; then
    "$PY" -m cpt_harness.infra.wandb_files "$RUNS/$study/wandb" --brief > "$dir/wandb-summaries.json"
    "$PY" - "$dir" "$study" <<'PY'
import json, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
folder, name = sys.argv[1:]
study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/study.db")
runs = {r["run"].split(" ")[0]: r for r in json.load(open(f"{folder}/wandb-summaries.json"))}
done = [t for t in study.trials if t.state.name == "COMPLETE"]
diffs = [abs(runs[f"{name}-t{t.number:03d}"]["summary"][k] - t.user_attrs[k]) for t in done
         for k in ("domain_loss", "forgetting", "general_kl") if f"{name}-t{t.number:03d}" in runs]
found = sum(f"{name}-t{t.number:03d}" in runs for t in done)
print(f"[claims] {folder}: W&B runs read back for {found} of {len(done)} complete trials; largest difference from "
      f"the study database in domain_loss, forgetting, general_kl: {max(diffs, default=float('nan')):.2e}")
PY
  fi
}
report legal-claims sweeps/gpu-ablation.yaml gpu-legal-ablation
report legal-claims-rslora sweeps/gpu-ablation.yaml gpu-legal-ablation-rslora --set "ablation.factors=[rslora]" --set ablation.rank=16
report legal-claims-ratio sweeps/gpu-ablation.yaml gpu-legal-ablation-ratio --set "ablation.factors=[embedding_lr_ratio]"
report legal-claims-replay sweeps/gpu-ablation.yaml gpu-legal-ablation-replay --set "ablation.factors=[replay]" --set data.replay.source=builtin:brown --set data.replay.fraction=0.25
report french-claims sweeps/gpu-ablation-french.yaml gpu-french-ablation
report french-claims-rslora sweeps/gpu-ablation-french.yaml gpu-french-ablation-rslora --set "ablation.factors=[rslora]" --set ablation.rank=16
report french-claims-ratio sweeps/gpu-ablation-french.yaml gpu-french-ablation-ratio --set "ablation.factors=[embedding_lr_ratio]"
