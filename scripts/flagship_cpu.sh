#!/bin/bash
# The CPU jobs of the resnet18_cifar10 family after its standard model, one after another (2 cores:
# one CPU-heavy job at a time): the LGA, control and Hessian fine-tunes, then the frontier's fine-tunes
# (LGA, Hessian, gradient norm, adversarial training and TRADES at other strengths), their 500-image
# evaluations and the train-step table. A step is skipped when this checkout already publishes its result
# (scripts/flagship_state.py: weights trained from today's recipe, results of the pinned weights on
# enough images), so on any machine just start it again; training steps resume their checkpoints.
#
#   SESSION_BASE=<first HEAD> nohup scripts/flagship_cpu.sh > ~/lga-runs/queue/flagship.out 2>&1 &  # checkout root
#   tail -f ~/lga-runs/queue/queue.log ~/lga-runs/resnet18_cifar10_hessian/run/progress.log
#
# RUNS (default ~/lga-runs) holds the runs, outside the work tree; DATA (default ../shared/data) the
# CIFAR-10 archive. Trained models and evaluations publish into this checkout (model_cards/, zoo.json,
# README table); commit them. Attacks run under bf16 autocast where the CPU has native bf16 kernels
# (benchmarks/evaluate_precision.py found every figure inside the fp32 interval on such a CPU) and
# in fp32 elsewhere (lga_zoo/precision.py).
#
# One submission holds at most two replaced weight files (scripts/submission_size.py): before each
# training step the queue checks that this session's commits since SESSION_BASE (required: the commit
# the session started from, its first HEAD), and what is published but not committed, leave room for
# one more, and stops with a note otherwise. Commit and land, then start it again in the next session.
set -u
command -v lga-zoo > /dev/null || { echo "lga-zoo is not on PATH: activate the environment it is installed in first" >&2; exit 2; }
RUNS=${RUNS:-$HOME/lga-runs}
DATA=${DATA:-../shared/data}
Q=$RUNS/queue
SESSION_BASE=${SESSION_BASE:?set SESSION_BASE to the commit this session started from (its first HEAD)}
mkdir -p "$Q"
log() { echo "$(date '+%F %T') $*" >> "$Q/queue.log"; }
step() {  # step NAME COMMAND...: run it, logged; stop the queue on a failure
  local name=$1; shift
  log "start $name"
  if "$@" > "$Q/$name.log" 2>&1; then log "done $name"; else log "FAILED $name (see $Q/$name.log)"; exit 1; fi
}
train() {  # train NAME [DTYPE]: recipes/NAME.yaml into $RUNS/NAME/run (resumed when it holds a checkpoint), then
  # publish its weights as DTYPE (float32, the default, or float16: half the room)
  python scripts/flagship_state.py trained "$1" && return 0
  local dtype=${2:-float32} room=110
  [ "$dtype" = float16 ] && room=55
  python scripts/submission_size.py "$SESSION_BASE" --room $room
  case $? in
    0) ;;
    1) log "stop before training $1: no room for its weights in this session's submission; land first"; exit 0 ;;
    *) log "FAILED the size check before training $1 (SESSION_BASE=$SESSION_BASE)"; exit 1 ;;
  esac
  local out=$RUNS/$1/run resume=""
  if [ -d "$out" ] && python scripts/flagship_state.py started-elsewhere "$out" 2> /dev/null; then
    # a run from the weights the standard had before it was published anew: kept, not resumed
    local aside="$out.from-older-start-$(date +%Y%m%d-%H%M%S)"
    mv "$out" "$aside" && log "moved $out aside to $aside: it fine-tunes older weights than the pinned ones"
  fi
  [ -f "$out/checkpoint.pt" ] && resume=--resume
  lga-zoo train "recipes/$1.yaml" --data-dir "$DATA" --out "$out" $resume --no-progress --checkpoint-minutes 10 \
    && lga-zoo publish "$1" --from "$out" --dtype "$dtype"
}
evaluate() {  # evaluate NAME N N_SLOW: N robustness images (IG on N_SLOW), published; a copy kept in $RUNS.
  # --resume continues a stopped evaluation from its state in $RUNS/NAME (outside the work tree, which a
  # new session lays anew); a fresh one starts without it. The state is refused on a CPU of the other kind
  # (bf16 attacks where the CPU has native bf16, fp32 elsewhere): delete it there to start afresh.
  python scripts/flagship_state.py evaluated "$1" "$2" && return 0
  lga-zoo evaluate "$1" --data-dir "$DATA" --n-images "$2" --n-images-slow "$3" --methods grad,ig \
    --attack-map grad --attack-amp bf16 --batch-size 50 --publish --no-progress \
    --state "$RUNS/$1/eval_state_$2.safetensors" --resume || return 1
  mkdir -p "$RUNS/$1" && cp "model_cards/$1/results.json" "$RUNS/$1/results_$2.json"
}
add() {  # add WHAT NAME: lga-zoo evaluate --add WHAT (apgd: APGD-CE + APGD-T in fp32; quantus: Quantus'
  # Max-Sensitivity, LLE, RIS and ROAD on 200 images) on the robustness images of its published results
  python scripts/flagship_state.py "has-$1" "$2" && return 0
  lga-zoo evaluate "$2" --data-dir "$DATA" --add "$1" --batch-size 50 --publish --no-progress \
    --state "$RUNS/$2/$1_state.safetensors" --resume || return 1
  mkdir -p "$RUNS/$2" && cp "model_cards/$2/results.json" "$RUNS/$2/results_$1.json"
}
# The headline first: the LGA model and its control (about 43 and 11 min on a 2-core CPU with native
# bf16), the LGA evaluation (about 1 h), then the rest. Each step publishes, so commit as they land.
step train_lga train resnet18_cifar10_lga
step train_control train resnet18_cifar10_control
step eval_standard_500 evaluate resnet18_cifar10_standard 500 200
step eval_lga_500 evaluate resnet18_cifar10_lga 500 200
step eval_control_500 evaluate resnet18_cifar10_control 500 200
step train_hessian train resnet18_cifar10_hessian
step eval_hessian_500 evaluate resnet18_cifar10_hessian 500 200
# The frontier: fine-tunes of the same standard weights with the control's schedule, stored in float16,
# and once the train-step table with a row per training objective (about 8 min).
bench=$Q/train_step_resnet18_cifar.md
for name in lga_l2_0p05 adversarial_eps2 hessian_lam5em6 adversarial_eps1 gradnorm_lam0p005 trades_beta6 \
  lga_l2_0p4 gradnorm_lam0p02; do
  step "train_$name" train "resnet18_cifar10_$name" float16
  step "eval_${name}_500" evaluate "resnet18_cifar10_$name" 500 200
  step "apgd_$name" add apgd "resnet18_cifar10_$name"
  step "quantus_$name" add quantus "resnet18_cifar10_$name"
  [ -s "$bench" ] || step bench_train_step sh -c "python benchmarks/train_step.py --arch resnet18_cifar \
    --regularizers none,lga,hessian,gradnorm,adversarial,trades --steps 3 > '$bench.tmp' && mv '$bench.tmp' '$bench'"
done
# The published models evaluated before APGD and Quantus existed: those figures added on the same images.
for name in resnet18_cifar10_standard resnet18_cifar10_control resnet18_cifar10_lga resnet18_cifar10_hessian \
  resnet18_w16_cifar10_standard resnet18_w16_cifar10_control resnet18_w16_cifar10_lga; do
  step "apgd_$name" add apgd "$name"
  step "quantus_$name" add quantus "$name"
done
log "queue finished"
