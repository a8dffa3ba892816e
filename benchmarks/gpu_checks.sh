#!/usr/bin/env bash
# The GPU checks of issue 15, as one prepared script for a session that is lent a GPU
# (the device tool): run it there from the repository root, with the figures written to
# $OUT (or ./gpu-checks when OUT is unset). Nothing here runs in CI or on a CPU machine.
#
#   1. train-cnn on CUDA with --amp against the CPU, seconds per epoch from the cards:
#      the 2024 study's multi-branch network (--arch almss) on a synthetic four-phase
#      cohort, and the 2023 study's DenseNet-121 on the demo cohort;
#   2. benchmarks/cnn_inference_onnx_vs_torch.py with its CUDA section (goal: ONNX
#      Runtime fp16 at least 3x PyTorch fp32); needs onnxruntime-gpu;
#   3. segment --device cuda with both backends on a 512x512x600 scan
#      (benchmarks/large_scan.py; goal: the ONNX backend no slower than nnU-Net's predictor).
#
# Preparing the machine: its image has PyTorch but not metcli's other packages. Download
# the missing wheels here for its Python (see the device tool's README: pip download
# --python-version 3.12 ... -d .whl), carry .whl and install them first:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/toolkit/..   # and metcli itself: pip install -e . --no-deps
# then: bash benchmarks/gpu_checks.sh
set -euo pipefail

OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
WORK=$(mktemp -d)
METCLI=(python3 -c "from metcli.cli.main import main; main()")
EPOCHS=${EPOCHS:-3}
log() { printf '%s\n' "$*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$OUT/gpu.txt"

seconds_per_epoch() {  # the card's training.seconds_per_epoch
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['training']['seconds_per_epoch'])" "$1"
}

# 1. training speed: CUDA with --amp against the CPU, same data and epochs
"${METCLI[@]}" synth "$WORK/almss" --scenario almss \
    --class-counts hcc=8,icc=8,colorectal=8 --seed 7 -q
ALMSS=("$WORK/almss/rawdata" "$WORK/almss/derivatives/truth-lesions")
# shellcheck disable=SC2054  # commas separate the phases of one option
ALMSS_ARGS=(--labels "$WORK/almss/rawdata/participants.tsv" --arch almss
    --phases portal,native,arterial,delayed --seg "$WORK/almss/derivatives/truth"
    --covariates age,sex --size 64 --epochs "$EPOCHS" --batch-size 8 -q)
"${METCLI[@]}" train-cnn "${ALMSS[@]}" "$WORK/almss-cuda" "${ALMSS_ARGS[@]}" --device cuda --amp
"${METCLI[@]}" train-cnn "${ALMSS[@]}" "$WORK/almss-cpu" "${ALMSS_ARGS[@]}" --device cpu
cp "$WORK/almss-cuda/model/model.json" "$OUT/almss_cuda_card.json"
log "almss s/epoch: cuda+amp $(seconds_per_epoch "$WORK/almss-cuda/model/model.json")," \
    "cpu $(seconds_per_epoch "$WORK/almss-cpu/model/model.json")"

"${METCLI[@]}" synth "$WORK/demo" --subjects 24 --seed 11 -q
DEMO=("$WORK/demo/rawdata" "$WORK/demo/derivatives/truth-lesions")
DENSE_ARGS=(--labels "$WORK/demo/rawdata/participants.tsv" --arch densenet121
    --epochs "$EPOCHS" --batch-size 32 -q)
"${METCLI[@]}" train-cnn "${DEMO[@]}" "$WORK/dense-cuda" "${DENSE_ARGS[@]}" --device cuda --amp
"${METCLI[@]}" train-cnn "${DEMO[@]}" "$WORK/dense-cpu" "${DENSE_ARGS[@]}" --device cpu
cp "$WORK/dense-cuda/model/model.json" "$OUT/densenet_cuda_card.json"
log "densenet121 s/epoch: cuda+amp $(seconds_per_epoch "$WORK/dense-cuda/model/model.json")," \
    "cpu $(seconds_per_epoch "$WORK/dense-cpu/model/model.json")"

# 2. inference: ONNX Runtime (CUDA provider, fp16) against PyTorch
python3 benchmarks/cnn_inference_onnx_vs_torch.py --json "$OUT/cnn_inference.json" \
    | tee "$OUT/cnn_inference.txt"

# 3. segment --device cuda, both backends, on a 512x512x600 scan
python3 benchmarks/large_scan.py --device cuda --steps segment-nnunet,segment-onnx \
    | tee "$OUT/large_scan_cuda.txt"

log "figures in $OUT; copy them and the cards into docs/benchmarks.md with the GPU's name"
rm -rf "$WORK"
