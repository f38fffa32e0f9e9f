#!/bin/bash
# The CPU jobs of the resnet18_cifar10 family after its standard model, one after another (2 cores:
# one CPU-heavy job at a time): the control, LGA and Hessian fine-tunes, their 500-image evaluations
# and the train-step table. Each finished step leaves $RUNS/queue/done/STEP and is skipped when the
# script runs again; training steps resume their checkpoints, so after a stop just start it again.
#
#   nohup scripts/flagship_cpu.sh > ~/lga-runs/queue/flagship.out 2>&1 &     # from the checkout root
#   tail -f ~/lga-runs/queue/queue.log ~/lga-runs/resnet18_cifar10_lga/run/progress.log
#
# RUNS (default ~/lga-runs) holds the runs, outside the work tree; DATA (default ../shared/data) the
# CIFAR-10 archive. Evaluations publish into this checkout (model_cards/, zoo.json, README table)
# and keep a copy of each results.json in $RUNS/NAME/. Attacks run in bf16 when
# benchmarks/evaluate_precision.py found every figure inside the fp32 interval ($RUNS/queue/precision_standard.md).
set -u
command -v lga-zoo > /dev/null || { echo "lga-zoo is not on PATH: activate the environment it is installed in first" >&2; exit 2; }
RUNS=${RUNS:-$HOME/lga-runs}
DATA=${DATA:-../shared/data}
Q=$RUNS/queue
mkdir -p "$Q/done"
log() { echo "$(date '+%F %T') $*" >> "$Q/queue.log"; }
step() {  # step NAME COMMAND...: run unless done; stop the queue on a failure
  local name=$1; shift
  [ -f "$Q/done/$name" ] && return 0
  log "start $name"
  if "$@" > "$Q/$name.log" 2>&1; then touch "$Q/done/$name"; log "done $name"; else log "FAILED $name (see $Q/$name.log)"; exit 1; fi
}
train() {  # train NAME: recipes/NAME.yaml into $RUNS/NAME/run, resumed when it holds a checkpoint
  local out=$RUNS/$1/run resume=""
  [ -f "$out/checkpoint.pt" ] && resume=--resume
  lga-zoo train "recipes/$1.yaml" --data-dir "$DATA" --out "$out" $resume --no-progress --checkpoint-minutes 10
}
evaluate() {  # evaluate NAME N N_SLOW: publish the run's weights when they are new, evaluate, keep the results
  local name=$1 run=$RUNS/$1/run
  if [ -f "$run/model.safetensors" ] && ! cmp -s "$run/model.safetensors" "model_cards/$name/model.safetensors"; then
    lga-zoo publish "$name" --from "$run" || return 1
  fi
  lga-zoo evaluate "$name" --data-dir "$DATA" --n-images "$2" --n-images-slow "$3" --methods grad,ig \
    --attack-map grad --attack-amp "$AMP" --batch-size 50 --publish --no-progress || return 1
  mkdir -p "$RUNS/$name" && cp "model_cards/$name/results.json" "$RUNS/$name/results_$2.json"
}
step precision_standard sh -c "python benchmarks/evaluate_precision.py resnet18_cifar10_standard --data-dir '$DATA' --methods grad,ig > '$Q/precision_standard.md'"
AMP=none
grep -q "every figure inside: True" "$Q/precision_standard.md" && AMP=bf16
log "attack amp: $AMP"
step eval_standard_100 evaluate resnet18_cifar10_standard 100 50
step train_control train resnet18_cifar10_control
step eval_control_500 evaluate resnet18_cifar10_control 500 200
step train_lga train resnet18_cifar10_lga
step eval_lga_500 evaluate resnet18_cifar10_lga 500 200
step eval_standard_500 evaluate resnet18_cifar10_standard 500 200
step train_hessian train resnet18_cifar10_hessian
step eval_hessian_500 evaluate resnet18_cifar10_hessian 500 200
step bench_train_step sh -c "python benchmarks/train_step.py --arch resnet18_cifar --regularizers none,lga,hessian --steps 3 > '$Q/train_step_resnet18_cifar.md'"
log "queue finished"
