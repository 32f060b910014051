#!/usr/bin/env bash
# Representations and alignments for the real-model bake-off (benchmarks/bakeoff_real.md):
# SmolLM2-135M (builtin:smollm2-135m) -> Qwen2 (builtin:qwen2), GloVe on a 50 MB training slice of
# the benchmark corpus (benchmarks/make_corpus.py --max-mb-per-group 16), then TokAlign++
# (VecMap seeded by the shared tokens + CSLS) and TokAlign (relative representations).
# Every stage goes through the `tokalign` CLI (the production path), its artifacts are
# content-cached in $WORK/store, and a finished stage is skipped on a rerun.
#
#   WORK=.cache/bakeoff_real nice -n 5 benchmarks/bakeoff_real_reps.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$ROOT/.cache/bakeoff_real}
CORPUS=${CORPUS:-$ROOT/.cache/bench/corpus}
BYTES=${BYTES:-53000000}  # 95% (50.75 MB) trains, 5% held out by `corpus`
DIM=${DIM:-100}
ITERS=${ITERS:-5}
VECMAP_ITERS=${VECMAP_ITERS:-5}  # capped: the machine was too loaded for more
VECMAP_CUTOFF=${VECMAP_CUTOFF:-5000}  # self-learning rows (paper: 20,000)
SRC=builtin:smollm2-135m
TGT=builtin:qwen2
PY=${PY:-/work/main/.venv/bin/python}
export PYTHONPATH=$ROOT OMP_NUM_THREADS=1
STORE=$WORK/store
mkdir -p "$WORK"
stage() {  # stage NAME SUBCOMMAND ARGS...: run `tokalign` once, keep its artifact path
  local name=$1; shift
  if [[ -s $WORK/$name.out ]]; then tail -n1 "$WORK/$name.out"; return; fi
  echo "$(date +%T) start $name (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  if ! /usr/bin/time -v -o "$WORK/$name.time" "$PY" -m tokalign_core "$@" \
      > "$WORK/$name.tmp" 2> "$WORK/$name.err"; then
    echo "$name failed: see $WORK/$name.err" >&2; tail -n3 "$WORK/$name.err" >&2; exit 1
  fi
  mv "$WORK/$name.tmp" "$WORK/$name.out"
  echo "$(date +%T) done $name (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  tail -n1 "$WORK/$name.out"
}
sources=()
for f in "$CORPUS"/*.jsonl; do sources+=(--source "$f" --ratio "$(stat -c %s "$f")"); done
corpus=$(stage corpus corpus "${sources[@]}" --format jsonl --byte-budget "$BYTES" \
  --artifact-root "$STORE" --no-progress)
tok_s=$(stage tokenize_source tokenize --corpus "$corpus" --tokenizer $SRC --workers 1 \
  --artifact-root "$STORE" --no-progress)
tok_t=$(stage tokenize_target tokenize --corpus "$corpus" --tokenizer $TGT --workers 1 \
  --artifact-root "$STORE" --no-progress)
co_s=$(stage cooccur_source cooccur "$tok_s" --window 15 --min-count 5 --artifact-root "$STORE")
co_t=$(stage cooccur_target cooccur "$tok_t" --window 15 --min-count 5 --artifact-root "$STORE")
# The two GloVe runs are independent: one thread each, side by side.
stage glove_source glove "$co_s" --dim "$DIM" --iterations "$ITERS" --engine numba \
  --threads 1 --seed 0 --metrics "$WORK/glove_source.jsonl" --no-progress \
  --artifact-root "$STORE" > /dev/null &
stage glove_target glove "$co_t" --dim "$DIM" --iterations "$ITERS" --engine numba \
  --threads 1 --seed 0 --metrics "$WORK/glove_target.jsonl" --no-progress \
  --artifact-root "$STORE" > /dev/null &
wait
gl_s=$(tail -n1 "$WORK/glove_source.out"); gl_t=$(tail -n1 "$WORK/glove_target.out")
common=(--source-emb "$gl_s" --target-emb "$gl_t" --source-tokenizer $SRC
        --target-tokenizer $TGT --holdout 0 --seed 0 --no-progress)
[[ -s $WORK/align_vecmap.out ]] || stage align_vecmap align "${common[@]}" \
  --method vecmap --init shared --max-iterations "$VECMAP_ITERS" \
  --vocab-cutoff "$VECMAP_CUTOFF" \
  --out "$WORK/align/vecmap" > /dev/null
[[ -s $WORK/align_relative.out ]] || stage align_relative align "${common[@]}" \
  --method relative --n-anchors 300 --out "$WORK/align/relative" > /dev/null
echo "$(date +%T) all done" >&2
