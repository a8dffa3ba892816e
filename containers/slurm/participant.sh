#!/usr/bin/env bash
#SBATCH --job-name=metcli-participant
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --time=04:00:00
# One array task of metcli's participant level: segment, split-lesions and extract for
# METCLI_PER_TASK participants (default 1), picked from the participants list by
# SLURM_ARRAY_TASK_ID (0-based). One metcli call per step for all of the task's
# participants, so segment loads its model once per task. submit.sh submits it:
#
#   sbatch --array=0-N participant.sh RAW_DIR OUT_DIR
#
# Writes under OUT_DIR/derivatives: segment/ (unless METCLI_SEG_DIR names existing
# segmentations, e.g. manual masks), lesions/, radiomics/. Finished outputs are skipped,
# so a failed task can be resubmitted alone (METCLI_ARRAY=<task id> submit.sh ...).
#
# Settings (environment): METCLI_PER_TASK; METCLI_SEG_DIR; METCLI_SEGMENT_ARGS,
# METCLI_SPLIT_ARGS, METCLI_EXTRACT_ARGS (more options of each step, split at spaces; the
# group job must see the same ones); the runner settings of common.sh (METCLI_RUNNER,
# METCLI_SIF, METCLI_CMD, METCLI_APPTAINER_ARGS, METCLI_PARTICIPANTS).
set -euo pipefail

here=${METCLI_SLURM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
if [[ ! -f $here/common.sh ]]; then
    echo "metcli slurm: error: $here/common.sh not found; set METCLI_SLURM_DIR to metcli's containers/slurm folder (submit.sh does)" >&2
    exit 1
fi
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

[[ $# -eq 2 ]] || die "usage: sbatch --array=0-N participant.sh RAW_DIR OUT_DIR"
raw_dir=$1
out_dir=$2
[[ -d $raw_dir ]] || die "$raw_dir: no such raw data folder; give the folder that holds sub-*/ and participants.tsv"
task=${SLURM_ARRAY_TASK_ID:-}
[[ -n $task ]] || die "participant.sh is an array job: submit it with sbatch --array=0-N (submit.sh does)"
per_task=${METCLI_PER_TASK:-1}
[[ $per_task =~ ^[1-9][0-9]*$ ]] || die "METCLI_PER_TASK=$per_task: give a whole number of participants per task (1 or more)"
require_participants_list "$raw_dir"

mapfile -t labels < <(task_participants "$raw_dir" "$task" "$per_task")
[[ ${#labels[@]} -gt 0 ]] \
    || die "array task $task: no participants at entries $((task * per_task + 1))-$(((task + 1) * per_task)) of the list ($(participant_ids "$raw_dir" | wc -l) entries); submit --array=0-N with N = ceil(entries / METCLI_PER_TASK) - 1"
select=()
for label in "${labels[@]}"; do
    select+=(--participant-label "$label")
done
echo "metcli slurm: task $task on ${HOSTNAME:-this node}: participants ${labels[*]}"

mkdir -p "$out_dir"  # Apptainer binds only existing folders
set_folders "$out_dir"
set_binds "$raw_dir" "$out_dir"
read -r -a segment_args <<< "${METCLI_SEGMENT_ARGS:-}"
read -r -a split_args <<< "${METCLI_SPLIT_ARGS:-}"
read -r -a extract_args <<< "${METCLI_EXTRACT_ARGS:-}"
common=(--no-progress)

if [[ -z ${METCLI_SEG_DIR:-} ]]; then
    metcli_run segment "$raw_dir" "$SEG_DIR" "${select[@]}" "${segment_args[@]}" "${common[@]}"
fi
metcli_run split-lesions "$SEG_DIR" "$LESIONS_DIR" "${select[@]}" "${split_args[@]}" "${common[@]}"
metcli_run extract "$raw_dir" "$LESIONS_DIR" "$FEATURES_DIR" "${select[@]}" \
    --jobs "${SLURM_CPUS_PER_TASK:-1}" "${extract_args[@]}" "${common[@]}"
echo "metcli slurm: task $task done"
