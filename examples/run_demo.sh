#!/usr/bin/env bash
# The main job: metcli's pipeline on its built-in synthetic cohort, from CTs to a report.
# Copy it and replace the synth step with your own raw dataset (docs/architecture.md).
#
#   examples/run_demo.sh [OUT_DIR]          (default ./demo; `make demo` runs it)
#
# Every step is one documented metcli command; each writes its own derivatives folder
# and skips what is already done, so the script can be run again after an interruption.
set -euo pipefail
out="${1:-demo}"
here="$(cd "$(dirname "$0")" && pwd)"
raw="$out/rawdata"
derivatives="$out/derivatives"

# 1. a cohort of 24 portal-venous CT phantoms (colorectal vs pancreatic), with true masks
metcli synth "$out" --subjects 24 --seed 0

# 2. liver and lesion masks with the shipped demo nnU-Net v2 model, and how good they are
metcli segment "$raw" "$derivatives/segment" --no-tta
metcli evaluate-seg "$derivatives/segment" "$derivatives/truth" "$derivatives/segment-vs-truth"

# 3. one id per lesion (lesions under 5 mm dropped), lesion tables, tumour burden
metcli split-lesions "$derivatives/segment" "$derivatives/lesions"

# 4. pyradiomics features of every kept lesion
metcli extract "$raw" "$derivatives/lesions" "$derivatives/radiomics" --jobs 2

# 5. the eight classifiers with SMOTE and undersampling, 8 test patients held out
metcli train-radiomics "$derivatives/radiomics" "$derivatives/models" \
    --labels "$raw/participants.tsv" --protocol holdout --test-patients 8 \
    --cv-repeats 1 --jobs 2 --seed 0

# 6. the lesion-slice DenseNet-121 on the same test patients (small and short here)
metcli train-cnn "$raw" "$derivatives/lesions" "$derivatives/cnn" \
    --labels "$raw/participants.tsv" --split "$derivatives/models/split.tsv" \
    --val-patients 4 --size 64 --epochs 8 --patience 3 --seed 0

# 7. metrics with confidence intervals, comparisons, plots and report.html
metcli evaluate "$derivatives/models" "$derivatives/cnn" "$derivatives/evaluation" --compare \
    --labels "$raw/participants.tsv" --raw "$raw" --lesions "$derivatives/lesions" --seed 0 \
    > /dev/null

echo
echo "Table 3 of this run (test patients):"
"$here/table3.sh" "$derivatives/evaluation/metrics.tsv"
echo
echo "demo done: open $derivatives/evaluation/report.html"
