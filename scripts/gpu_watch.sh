#!/usr/bin/env bash
# Watch scripts/gpu_claims.sh for SECONDS (progress every 60 s), then pack what a later block or the reports
# need into OUTDIR: every study database, the logs and each trial's per-document results (claims.tgz), and the
# W&B offline run files (wandb.tgz). With --stop, first stop the run (no new study, running trials interrupted):
# the stop and the packing are kept inside SECONDS too (75 s of it), so that the call ends within its limit.
#
#   bash scripts/gpu_watch.sh SECONDS OUTDIR [--stop]
#   WATCH="gpu_issue1[8]" bash scripts/gpu_watch.sh SECONDS OUTDIR   # watch benchmarks/gpu_issue18.sh instead
#   (a pattern that does not match its own command line, which names it)
#
# WATCH is the pgrep -f pattern of what runs (default: the claims' ablate and sweep commands); benchmark results
# under runs/bench come back as bench.tgz.
set -u
WATCH=${WATCH:-"cpt_harness (ablate|sweep)"}
SECONDS_LEFT=$1
OUTDIR=$2
counts() {
  python3 - <<'PY'
import glob, sqlite3
for db in sorted(glob.glob("runs/*.db")):
    try:
        rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30).execute(
            "SELECT state, count(*) FROM trials GROUP BY state").fetchall()
        print(f"  {db}: " + ", ".join(f"{s} {n}" for s, n in rows))
    except sqlite3.Error as e:
        print(f"  {db}: {e}")
PY
}
[ "${3:-}" = "--stop" ] && SECONDS_LEFT=$(( SECONDS_LEFT > 75 ? SECONDS_LEFT - 75 : 0 ))
end=$(( $(date +%s) + SECONDS_LEFT ))
while [ "$(date +%s)" -lt "$end" ]; do
  echo "[watch] $(date -u +%T)"; counts; tail -n 2 runs/claims.log runs/bench/progress.log 2>/dev/null
  pgrep -f "$WATCH" >/dev/null || { echo "[watch] nothing matching '$WATCH' runs"; break; }
  sleep $(( end - $(date +%s) < 60 ? (end - $(date +%s) > 0 ? end - $(date +%s) : 0) : 60 ))
done
if [ "${3:-}" = "--stop" ]; then
  touch runs/STOP
  pkill -INT -f "cpt_harness (ablate|sweep)"
  pkill -INT -f "benchmarks\.(parallel|pool_startup|throughput|profile_step)"
  python3 -m cpt_harness pool --stop >/dev/null 2>&1
  for _ in $(seq 55); do pgrep -f "python3 -m (cpt_harness|benchmarks)" >/dev/null || break; sleep 1; done
  echo "[watch] stopped; still running: $(pgrep -fc 'python3 -m cpt_harness')"
fi
counts
mkdir -p "$OUTDIR"
tar czf "$OUTDIR/claims.tgz" runs/*.db runs/*.log \
    $(find runs -name evals.npz -o -name base_evals.npz -o -name error.log | sort) 2>/dev/null
find runs -name '*.wandb' -print0 | tar czf "$OUTDIR/wandb.tgz" --null -T - 2>/dev/null
[ -d runs/bench ] && tar czf "$OUTDIR/bench.tgz" runs/bench
ls -la "$OUTDIR"
