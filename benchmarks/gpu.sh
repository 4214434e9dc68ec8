#!/usr/bin/env bash
# The GPU figures of the learner and encode benchmarks in one run of under 9 minutes, for a
# machine lent for a few minutes: writes one JSON and one log per benchmark into OUT (default
# benchmarks/results/gpu), the most telling first, each under its own time limit so that one
# that hangs or fails leaves the others' results.
#
#   bash benchmarks/gpu.sh [OUT]        # python3 must have torch with CUDA and the project's packages
#
# GPU_BENCH_ARCHIVE=FILE.tar.gz also packs OUT into that file after every benchmark (for a machine
# that returns only a few files); GPU_BENCH_SECONDS (default 520) bounds the whole run;
# GPU_BENCH_ONLY="finetune encode ..." runs only the benchmarks named.
#
# Order: K = 1, 4, 16 tdmpc seeds in one process (eager) -> finetune, pixels, dreamer and tdmpc
# `xs` (eager, then compiled: tdmpc with CUDA graphs, dreamer's RSSM steps) -> the seeds
# compiled -> encode with loader processes -> update and planning of both `xs` models, eager
# and compiled.
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${GPU_BENCH_SECONDS:-520}))

step() {   # step NAME LIMIT_S ARGS...: one benchmark, its JSON on stdout, its progress in the log
    local name=$1 limit=$2; shift 2
    if [[ -n ${GPU_BENCH_ONLY:-} && " $GPU_BENCH_ONLY " != *" $name "* ]]; then return; fi
    local left=$((deadline - SECONDS))
    if ((left < 20)); then echo "$name: skipped, no time left" | tee -a "$out/summary.txt"; return; fi
    ((limit > left)) && limit=$left
    local start=$SECONDS
    timeout --kill-after=5 "$limit" python3 "$@" > "$out/$name.json" 2> "$out/$name.log"
    echo "$name: rc $? in $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/summary.txt"
    if [[ -n ${GPU_BENCH_ARCHIVE:-} ]]; then tar czf "$GPU_BENCH_ARCHIVE" -C "$(dirname "$out")" "$(basename "$out")"; fi
}

nvidia-smi -L > "$out/summary.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$out/summary.txt" 2>&1
python3 -c "from pipeline.envs import make_env; e = make_env('dmc/cartpole-swingup', frame_size=64); \
print('env frame', e.reset(seed=0)[0]['image'].shape)" >> "$out/summary.txt" 2>&1

step learner_seeds 60 benchmarks/learner.py --device cuda --world-models tdmpc --presets xs \
    --inputs state pixels --only-seeds --seeds 1 4 16 --modes eager --repeats 20
step finetune 100 benchmarks/finetune.py --device cuda --encoders pixels --world-models dreamer tdmpc \
    --steps 300 --episode-steps 100
step finetune_compiled 150 benchmarks/finetune.py --device cuda --encoders pixels --world-models tdmpc dreamer \
    --steps 300 --episode-steps 100 --modes compiled
step learner_seeds_compiled 100 benchmarks/learner.py --device cuda --world-models tdmpc --presets xs \
    --inputs state --only-seeds --seeds 1 16 --modes compiled --repeats 20
step encode 120 benchmarks/encode.py --device cuda --models dinov2 r3m-rn18 --episodes 32 --steps 249 \
    --collect-workers 8 --batch-size 256 --repeats 1 --no-dask --loaders 0 14
step learner 120 benchmarks/learner.py --device cuda --world-models tdmpc dreamer --presets xs \
    --inputs state pixels --modes eager compiled --repeats 10
cat "$out/summary.txt"
