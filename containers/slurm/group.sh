#!/usr/bin/env bash
#SBATCH --job-name=metcli-group
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=12:00:00
# metcli's group level, after every participant task succeeded (submit.sh submits it with
# --dependency=afterok on the array): the cohort tables of segment (dseg.tsv),
# split-lesions (lesions.tsv, tumour_burden.tsv) and extract (features.tsv), then, unless
# METCLI_TRAIN=0, train-radiomics on the features and evaluate on its predictions.
#
#   sbatch --dependency=afterok:ARRAY_JOB_ID group.sh RAW_DIR OUT_DIR
#
# Settings (environment): METCLI_SEG_DIR, METCLI_SEGMENT_ARGS, METCLI_SPLIT_ARGS,
# METCLI_EXTRACT_ARGS as for participant.sh (the same values); METCLI_TRAIN (1 or 0);
# METCLI_TRAIN_ARGS (options of train-radiomics, e.g. "--protocol holdout --test-patients 8");
# METCLI_EVALUATE_ARGS (options of evaluate); the runner settings of common.sh.
set -euo pipefail

here=${METCLI_SLURM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
if [[ ! -f $here/common.sh ]]; then
    echo "metcli slurm: error: $here/common.sh not found; set METCLI_SLURM_DIR to metcli's containers/slurm folder (submit.sh does)" >&2
    exit 1
fi
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

[[ $# -eq 2 ]] || die "usage: sbatch --dependency=afterok:ARRAY_JOB_ID group.sh RAW_DIR OUT_DIR"
raw_dir=$1
out_dir=$2
[[ -d $raw_dir ]] || die "$raw_dir: no such raw data folder; give the folder that holds sub-*/ and participants.tsv"

mkdir -p "$out_dir"  # Apptainer binds only existing folders
set_folders "$out_dir"
set_binds "$raw_dir" "$out_dir"
read -r -a segment_args <<< "${METCLI_SEGMENT_ARGS:-}"
read -r -a split_args <<< "${METCLI_SPLIT_ARGS:-}"
read -r -a extract_args <<< "${METCLI_EXTRACT_ARGS:-}"
read -r -a train_args <<< "${METCLI_TRAIN_ARGS:-}"
read -r -a evaluate_args <<< "${METCLI_EVALUATE_ARGS:-}"
common=(--no-progress)
jobs=${SLURM_CPUS_PER_TASK:-1}

if [[ -z ${METCLI_SEG_DIR:-} ]]; then
    metcli_run segment "$raw_dir" "$SEG_DIR" --level group "${segment_args[@]}" "${common[@]}"
fi
metcli_run split-lesions "$SEG_DIR" "$LESIONS_DIR" --level group "${split_args[@]}" "${common[@]}"
metcli_run extract "$raw_dir" "$LESIONS_DIR" "$FEATURES_DIR" --level group \
    "${extract_args[@]}" "${common[@]}"

case ${METCLI_TRAIN:-1} in
    0) echo "metcli slurm: METCLI_TRAIN=0: cohort tables done, no training" ;;
    1)
        labels=$raw_dir/participants.tsv
        metcli_run train-radiomics "$FEATURES_DIR" "$MODELS_DIR" --labels "$labels" \
            --jobs "$jobs" "${train_args[@]}" "${common[@]}"
        # evaluate the held-out test set when there is one (--protocol holdout), else the
        # out-of-fold predictions of the cross-validation (set train)
        if [[ -f $MODELS_DIR/predictions.tsv ]]; then
            predictions=("$MODELS_DIR/predictions.tsv")
        else
            predictions=("$MODELS_DIR/oof_predictions.tsv" --set train)
        fi
        metcli_run evaluate "${predictions[@]}" "$EVALUATION_DIR" --labels "$labels" \
            --raw "$raw_dir" --lesions "$LESIONS_DIR" "${evaluate_args[@]}" "${common[@]}"
        ;;
    *) die "METCLI_TRAIN=${METCLI_TRAIN}: use 1 (train and evaluate) or 0 (cohort tables only)" ;;
esac
echo "metcli slurm: group level done: $out_dir/derivatives"
