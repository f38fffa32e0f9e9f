#!/bin/bash
# The resnet18_cifar10 family on one GPU (the device tool's H200, 15 minutes a session), two models a
# session (MODELS, below): the standard model from scratch (recipes/gpu/), the control, LGA and Hessian
# fine-tunes from it, their 500-image evaluations (IG on 200), all published into a private copy of
# this checkout, then packed into files small enough for the trip back (16 MiB each, 4 chunks of
# weights per call).
#
# Here, once:  mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#              pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                --platform manylinux2014_x86_64 -d .whl captum==0.9.0    # the device's image lacks captum
#              rm model_cards/resnet18_cifar10_*/model.safetensors     # see below; git has them
# On the device (from the checkout root; carry .data and .whl):
#   call 1:  bash scripts/flagship_gpu.sh run       # trains, evaluates, packs; $OUT gets part 0
#            (stopped by its time limit? call it again at once: every step resumes or is skipped)
#   call 2:  bash scripts/flagship_gpu.sh fetch 1   # $OUT gets part 1 of the weights (two models: 6
#                                                   # chunks, parts 0 and 1; more models need 'fetch 2')
# Here:      git checkout model_cards    # first: the weights removed for the trip (also if the run fails)
#            python scripts/flagship_collect.py DIR1 DIR2   # the calls' files_at folders
#            then, once the standard comes from here, retire the CPU's staged standard recipe
#            (recipes/stages/: tests/test_train.py flags them), redraw examples/compare_targeted.png and
#            update the figures quoted in README.md's prose.
# The published ResNet-18 weights (45 MB each, tracked) stay behind: the tree that travels may hold
# 64 MiB in all, and a run that trains the standard from scratch does not need them.
# One submission holds at most two replaced weight files (scripts/submission_size.py: about 100 MiB
# each), so MODELS, the models a run trains, evaluates and sends back, defaults to two:
#   session A: MODELS="resnet18_cifar10_standard resnet18_cifar10_lga" (the default)
#   session B: MODELS="resnet18_cifar10_control resnet18_cifar10_hessian", fine-tuned from the standard
#              that session A pinned. Its weights must travel then: remove every other model.safetensors
#              (the w16 ones too) but resnet18_cifar10_standard's; with .data and .whl that is about
#              63.5 MiB of the 64.
# The cards of the family's other models come back too (text only), so their comparison sections and
# the stars of fine-tunes made from earlier weights follow the new standard.
#
# Everything lives in WORK (default .gpu/, ignored, kept on a warm machine between calls): tree/ (the
# checkout copy that is trained and published into, made on the first call), runs/ (checkpoints and
# evaluation state), pack/ (what comes back). A later call reuses tree/, so the tree sent with it does
# not undo what the earlier call published. Overrides for a CPU rehearsal: DEVICE, RECIPE_DIR, N_IMAGES,
# N_SLOW, EVAL_BATCH, EVAL_EXTRA, CHUNK_BYTES, PY. The rehearsal (recipes/gpu with epochs 1, amp none,
# max_train_images 256 in /tmp/smoke; 24 min on 2 cores shared with a training run, most of it the 10k-image test passes):
#   DEVICE=cpu RECIPE_DIR=/tmp/smoke WORK=/tmp/gpu_smoke DATA=../shared/data N_IMAGES=4 N_SLOW=2 EVAL_BATCH=4 \
#     EVAL_EXTRA="--attack-steps 3 --n-accuracy 200 --random-draws 2" PY=.venv/bin/python bash scripts/flagship_gpu.sh run
#   then 'fetch 1' with OUT=/tmp/gpu_smoke/out1, and flagship_collect.py --repo A_CLONE.
set -euo pipefail
ROOT=$(pwd)
WORK=$(realpath -m "${WORK:-$ROOT/.gpu}")
DATA=$(realpath -m "${DATA:-$ROOT/.data}")
RECIPE_DIR=$(realpath -m "${RECIPE_DIR:-$ROOT/recipes/gpu}")
OUT_DIR=$(realpath -m "${OUT:-$WORK/out}")
DEVICE=${DEVICE:-cuda}
N_IMAGES=${N_IMAGES:-500}
N_SLOW=${N_SLOW:-200}
EVAL_BATCH=${EVAL_BATCH:-250}
EVAL_EXTRA=${EVAL_EXTRA:-}
CHUNK_BYTES=${CHUNK_BYTES:-16000000}
CHUNKS_PER_PART=4
PY=${PY:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the steps run from WORK/tree
read -r -a MODELS <<< "${MODELS:-resnet18_cifar10_standard resnet18_cifar10_lga}"
FAMILY=(resnet18_cifar10_standard resnet18_cifar10_control resnet18_cifar10_lga resnet18_cifar10_hessian)
check_models() {  # MODELS: one to four names of FAMILY, the standard first when it is there
  local name
  [ "${#MODELS[@]}" -gt 0 ] || { echo "MODELS is empty; choose from: ${FAMILY[*]}" >&2; exit 2; }
  for name in "${MODELS[@]}"; do
    [[ " ${FAMILY[*]} " == *" $name "* ]] || { echo "MODELS: $name is not one of ${FAMILY[*]}" >&2; exit 2; }
  done
  if [[ " ${MODELS[*]} " == *" resnet18_cifar10_standard "* && ${MODELS[0]} != resnet18_cifar10_standard ]]; then
    echo "MODELS: resnet18_cifar10_standard must come first (the fine-tunes start from it)" >&2; exit 2
  fi
}
check_models
TREE=$WORK/tree RUNS=$WORK/runs PACK=$WORK/pack
mkdir -p "$OUT_DIR" "$RUNS"

log() { echo "$(date '+%F %T') $*" | tee -a "$RUNS/queue.log" "$OUT_DIR/queue.log"; }
lga() { (cd "$TREE" && PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m lga_zoo.cli "$@"); }
state() { (cd "$TREE" && PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/flagship_state.py "$@"); }

install_wheels() {  # wheels carried in .whl (captum is not in the device's image)
  if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

make_tree() {  # the private checkout copy, its recipes replaced by RECIPE_DIR's
  if [ -d "$TREE" ]; then  # a later call of the same session: the same models
    [ "$(cat "$WORK/models")" = "${MODELS[*]}" ] && return 0
    echo "this WORK was made for MODELS=\"$(cat "$WORK/models")\", not \"${MODELS[*]}\"" >&2; exit 2
  fi
  mkdir -p "$TREE.partial"
  tar -C "$ROOT" --exclude=./.gpu --exclude=./.data --exclude=./.whl --exclude=./.venv --exclude=./.git \
    --exclude=./runs -cf - . | tar -C "$TREE.partial" -xf -
  for name in "${MODELS[@]}"; do cp "$RECIPE_DIR/$name.yaml" "$TREE.partial/recipes/"; done
  if [[ " ${MODELS[*]} " == *" resnet18_cifar10_standard "* ]]; then
    rm -f "$TREE.partial"/model_cards/resnet18_cifar10_standard/train_log_stage*.jsonl  # the CPU's staged run
  fi
  echo "${MODELS[*]}" > "$WORK/models"
  mv "$TREE.partial" "$TREE"
  log "tree made from $(basename "$RECIPE_DIR")"
}

train() {  # train NAME: recipes/NAME.yaml into RUNS/NAME (resumed from its checkpoint), then publish
  state trained "$1" 2> /dev/null && { log "skip train $1 (published from its recipe)"; return 0; }
  local out=$RUNS/$1 resume=""
  [ -f "$out/checkpoint.pt" ] && resume=--resume
  log "train $1 $resume"
  lga train "recipes/$1.yaml" --data-dir "$DATA" --out "$out" --device "$DEVICE" $resume --no-progress \
    --checkpoint-minutes 2 > "$RUNS/train_$1.log" 2>&1 || { log "FAILED train $1"; tail -20 "$RUNS/train_$1.log"; exit 1; }
  lga publish "$1" --from "$out" >> "$RUNS/train_$1.log" 2>&1 || { log "FAILED publish $1"; exit 1; }
  log "done train $1: $(tail -1 "$out/log.jsonl")"
}

evaluate() {  # evaluate NAME: N_IMAGES robustness images (IG on N_SLOW), published into the tree
  state evaluated "$1" "$N_IMAGES" 2> /dev/null && { log "skip evaluate $1"; return 0; }
  log "evaluate $1"
  # shellcheck disable=SC2086
  lga evaluate "$1" --data-dir "$DATA" --n-images "$N_IMAGES" --n-images-slow "$N_SLOW" --methods grad,ig \
    --attack-map grad --batch-size "$EVAL_BATCH" --device "$DEVICE" --publish --no-progress \
    --state "$RUNS/eval_$1.safetensors" --resume $EVAL_EXTRA > "$RUNS/eval_$1.log" 2>&1 \
    || { log "FAILED evaluate $1"; tail -20 "$RUNS/eval_$1.log"; exit 1; }
  log "done evaluate $1"
}

pack() {  # PACK: manifest.json, publish.tar.gz (the published files but weights) and weights.NN chunks
  rm -rf "$PACK.partial" && mkdir -p "$PACK.partial"
  local files=() name
  for name in "${MODELS[@]}"; do files+=("$TREE/model_cards/$name/model.safetensors"); done
  PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$PACK.partial/manifest.json" "${files[@]}" << 'EOF'
import json, os, sys
from lga_zoo.folder import sha256_of
out, paths = sys.argv[1], sys.argv[2:]
models = [{"name": p.split("/")[-2], "bytes": os.path.getsize(p), "sha256": sha256_of(p)} for p in paths]
json.dump({"models": models}, open(out, "w"), indent=1)
EOF
  cat "${files[@]}" | split -b "$CHUNK_BYTES" -d -a 2 - "$PACK.partial/weights."
  local published=(lga_zoo/zoo.json README.md)
  for name in "${MODELS[@]}"; do published+=("recipes/$name.yaml"); done
  for name in "${FAMILY[@]}"; do published+=("model_cards/$name"); done
  tar -C "$TREE" --exclude=model.safetensors -czf "$PACK.partial/publish.tar.gz" "${published[@]}"
  rm -rf "$PACK" && mv "$PACK.partial" "$PACK"
  log "packed $(ls "$PACK" | tr '\n' ' ')"
}

fetch() {  # fetch K: part K's weight chunks into OUT (part 0 also the manifest, tarball and logs)
  local part=$1 first=$(( $1 * CHUNKS_PER_PART )) i
  [ -f "$PACK/manifest.json" ] || { echo "nothing packed in $PACK yet: run 'run' first" >&2; exit 1; }
  for (( i = first; i < first + CHUNKS_PER_PART; i++ )); do
    [ -f "$PACK/weights.$(printf %02d $i)" ] && cp "$PACK/weights.$(printf %02d $i)" "$OUT_DIR/"
  done
  if [ "$part" = 0 ]; then
    cp "$PACK/manifest.json" "$PACK/publish.tar.gz" "$OUT_DIR/"
    tar -C "$RUNS" -czf "$OUT_DIR/logs.tar.gz" --exclude='*.pt' --exclude='*.safetensors' .
  fi
  log "fetched part $part: $(ls "$OUT_DIR" | tr '\n' ' ')"
}

case "${1:-}" in
  run)
    install_wheels
    [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$RUNS/queue.log"
    make_tree
    for name in "${MODELS[@]}"; do train "$name"; done
    for name in "${MODELS[@]}"; do evaluate "$name"; done
    pack
    fetch 0
    ;;
  fetch) fetch "${2:?fetch needs a part number: 1 or 2}" ;;
  *) echo "usage: scripts/flagship_gpu.sh run | fetch K" >&2; exit 2 ;;
esac
