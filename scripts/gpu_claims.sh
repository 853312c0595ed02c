#!/usr/bin/env bash
# The claims of issue 13 (reports/README.md) on one GPU host, in two lanes that share every GPU:
#
#   [RECORD=N] bash scripts/gpu_claims.sh MODEL [GPUS] [PER_GPU_PER_LANE]    # e.g. /tmp/smollm2/smollm2.gguf 0,1,2,3 8
#
# RECORD=N adds a third lane: issue 14's recorded study (N random-sampled trials of sweeps/gpu-legal.yaml, 5 eval
# checkpoints each) for the CPU replay of samplers and pruners, RECORD_K trials per GPU (default PER_GPU_PER_LANE; fewer
# leaves the claims most of each GPU until they finish).
# Lane "legal" (sweeps/gpu-ablation.yaml) and lane "french" (sweeps/gpu-ablation-french.yaml) each run three
# frontier ablations one after another, in this order: gate_proj x embeddings, rsLoRA (rank {16, 256} x
# scaling), the embedding-LR ratio (dose-response); the legal lane then replay {0.25 of Brown, none} (issue 17:
# does replay lower forgetting, on SOTU, at matched domain gain?). Both lanes place PER_GPU_PER_LANE trials on every GPU, so
# while one lane's study waits for its last trials, the other lane's trials run faster on the freed GPU.
# Each study lives in runs/<db> and resumes where a previous block stopped (the same command adds only the
# missing trials): a study missing from runs/ starts from its committed database (reports/<lane>-claims*/study.db)
# when there is one, and a study already complete (60 trials: 4 arms x 3 LRs x 5 seeds) is skipped. To stop early: `touch runs/STOP` (no new study starts), then SIGINT the `ablate` parents
# (`pkill -INT -f "cpt_harness (ablate|sweep)"`): running trials are recorded as interrupted and rerun on resume.
#
# How block 2 ran on a lent 4-GPU machine (calls of at most 10 minutes, nothing kept between sessions): the kit's
# three calls, the tree copied to /tmp/cpt, this script started with `setsid nohup ... &` so that it outlives the
# call, then `bash scripts/gpu_watch.sh SECONDS $OUT` in each later call (the last with --stop), which brings back
# claims.tgz (databases, logs, per-document results) and wandb.tgz. The tree is over 10 MB now: split the model
# so that the tree plus the larger part fits a call's 64 MiB (after block 3 the tree is 14.5 MB: it no longer fits beside
# make-kit's 54.4 MB second part; 50,000,000 + 48,362,432 bytes leaves room for a 17 MB tree):
#   cat .kitm1/smollm2.gguf.part1 .kitm2/smollm2.gguf.part2 > /tmp/m.gguf
#   head -c 50000000 /tmp/m.gguf > .kitm1/smollm2.gguf.part1; tail -c +50000001 /tmp/m.gguf > .kitm2/smollm2.gguf.part2
set -uf  # -f: the --set values hold brackets, never globs
MODEL=$1
GPUS=${2:-0,1,2,3}
K=${3:-8}
mkdir -p runs
say() { echo "[claims] $(date -u +%T) $*" | tee -a runs/claims.log; }

claim_args() {  # $1 lane (legal|french), $2 claim: the --set overrides of that study
  case $2 in
    gate) ;;
    rslora) echo "--set ablation.factors=[rslora] --set ablation.rank=16 --set ablation.study_name=gpu-$1-ablation-rslora
                  --set study.storage=sqlite:///runs/gpu-ablation-$1-rslora.db" ;;
    ratio) echo "--set ablation.factors=[embedding_lr_ratio] --set ablation.study_name=gpu-$1-ablation-ratio
                 --set study.storage=sqlite:///runs/gpu-ablation-$1-ratio.db" ;;
    replay) echo "--set ablation.factors=[replay] --set data.replay.source=builtin:brown --set data.replay.fraction=0.25
                  --set ablation.study_name=gpu-$1-ablation-replay --set study.storage=sqlite:///runs/gpu-ablation-$1-replay.db" ;;
  esac
}

db_of() {  # $1 lane, $2 claim: the study's database under runs/
  case $1:$2 in
    legal:gate) echo runs/gpu-ablation.db ;;
    french:gate) echo runs/gpu-ablation-french.db ;;
    *) echo "runs/gpu-ablation-$1-$2.db" ;;
  esac
}

complete() {  # the COMPLETE trials in database $1 (0 if there is none)
  python3 -c 'import sqlite3, sys, os
p = sys.argv[1]
print(sqlite3.connect(p).execute("SELECT count(*) FROM trials WHERE state = \"COMPLETE\"").fetchone()[0]
      if os.path.isfile(p) else 0)' "$1"
}

lane() {  # $1 lane, $2 config, $3... the claims, in order
  local name=$1 config=$2
  shift 2
  for claim in "$@"; do
    [ -e runs/STOP ] && { say "$name: stop asked, $claim not started"; return; }
    db=$(db_of "$name" "$claim")
    committed=reports/$name-claims$([ "$claim" = gate ] || echo "-$claim")/study.db
    if [ ! -f "$db" ] && [ -f "$committed" ]; then cp "$committed" "$db"; say "$name $claim: resuming $committed"; fi
    want=$([ "$claim" = replay ] && echo 30 || echo 60)  # arms x 3 LRs x 5 seeds
    if [ "$(complete "$db")" -ge "$want" ]; then say "$name $claim: complete, skipped"; continue; fi
    say "$name $claim: start"
    # shellcheck disable=SC2046  # claim_args is a list of words by design
    python3 -m cpt_harness ablate "$config" --gpus "$GPUS" --trials-per-gpu "$K" --set "model.name=$MODEL" \
        $(claim_args "$name" "$claim") >>"runs/claims-$name-$claim.log" 2>&1
    say "$name $claim: rc=$?"
  done
}

record() {  # issue 14's recording: RECORD random-sampled trials of sweeps/gpu-legal.yaml with eval curves, for
  # `python -m benchmarks.replay_search` (benchmarks/RESULTS.md, "Search strategies"); resumes like the claims
  local db=runs/gpu-legal-record.db
  [ "$(complete "$db")" -ge "$RECORD" ] && { say "record: complete, skipped"; return; }
  say "record: start ($RECORD trials)"
  python3 -m cpt_harness sweep sweeps/gpu-legal.yaml --gpus "$GPUS" --trials-per-gpu "${RECORD_K:-$K}" --n-trials "$RECORD" \
      --set "model.name=$MODEL" --set study.name=gpu-legal-record --set study.sampler=random \
      --set train.eval_every=40 --set "study.storage=sqlite:///$db" >>runs/record.log 2>&1
  say "record: rc=$?"
}

say "model $MODEL, GPUs $GPUS, $K trials per GPU per lane${RECORD:+, recording $RECORD trials}"
lane legal sweeps/gpu-ablation.yaml gate rslora ratio replay &
sleep 30  # the first lane takes the heal's build lock; the second finds the healed base cached
lane french sweeps/gpu-ablation-french.yaml gate rslora ratio &
[ "${RECORD:-0}" -gt 0 ] && record &
wait
say "both lanes done"
