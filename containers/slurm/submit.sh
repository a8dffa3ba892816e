#!/usr/bin/env bash
# Submit metcli's pipeline on SLURM: a job array of the participant level (participant.sh:
# segment, split-lesions, extract; METCLI_PER_TASK participants a task) and the group level
# (group.sh: cohort tables, train-radiomics, evaluate) that runs once every array task
# succeeded (--dependency=afterok). Prints "ARRAY_JOB_ID GROUP_JOB_ID" on stdout.
#
#   containers/slurm/submit.sh RAW_DIR OUT_DIR [SBATCH_OPTION...]
#
# SBATCH_OPTIONs go to both sbatch calls (e.g. --partition=gpu --gres=gpu:1 --account=X).
# Logs: OUT_DIR/logs/participant-<array job>_<task>.log and group-<job>.log.
#
# Settings (environment; see common.sh, participant.sh and group.sh for the others):
#   METCLI_RUNNER=apptainer|local, METCLI_SIF, METCLI_CMD   how metcli runs
#   METCLI_PER_TASK=N      participants per array task (default 1)
#   METCLI_ARRAY=SPEC      only these task ids (e.g. 3 or 3,7): resubmit failed tasks; the
#                          others' outputs are done and a new group job follows them
#   METCLI_MAX_RUNNING=N   at most N array tasks at once
#   METCLI_NO_GROUP=1      submit the array only
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

[[ $# -ge 2 ]] || die "usage: $0 RAW_DIR OUT_DIR [SBATCH_OPTION...]"
[[ -d $1 ]] || die "$1: no such raw data folder; give the folder that holds sub-*/ and participants.tsv"
raw_dir=$(cd "$1" && pwd)
mkdir -p "$2/logs"
out_dir=$(cd "$2" && pwd)
shift 2

per_task=${METCLI_PER_TASK:-1}
[[ $per_task =~ ^[1-9][0-9]*$ ]] || die "METCLI_PER_TASK=$per_task: give a whole number of participants per task (1 or more)"
require_participants_list "$raw_dir"
count=$(participant_ids "$raw_dir" | wc -l)
[[ $count -gt 0 ]] || die "$(participants_list "$raw_dir"): lists no participants; add rows (participant_id column)"
tasks=$(((count + per_task - 1) / per_task))
array=${METCLI_ARRAY:-0-$((tasks - 1))}
if [[ -n ${METCLI_MAX_RUNNING:-} ]]; then
    array+="%$METCLI_MAX_RUNNING"
fi
if [[ ${METCLI_RUNNER:-apptainer} == apptainer ]]; then
    # the job scripts run elsewhere: give them the image's absolute path
    sif=${METCLI_SIF:-metcli.sif}
    [[ -f $sif ]] || die "$sif: no such image; build it with 'apptainer build metcli.sif Apptainerfile' and set METCLI_SIF to its path (or METCLI_RUNNER=local)"
    METCLI_SIF=$(cd "$(dirname "$sif")" && pwd)/$(basename "$sif")
    export METCLI_SIF
fi
export METCLI_SLURM_DIR=$here METCLI_PER_TASK=$per_task
command -v sbatch >/dev/null || die "sbatch: not found; run this on a SLURM login node"

array_id=$(sbatch --parsable --export=ALL --array="$array" \
    --output="$out_dir/logs/participant-%A_%a.log" "$@" \
    "$here/participant.sh" "$raw_dir" "$out_dir")
array_id=${array_id%%;*}
echo "metcli slurm: $count participants, array job $array_id (tasks $array, $per_task a task)" >&2
group_id=none
if [[ ${METCLI_NO_GROUP:-0} != 1 ]]; then
    group_id=$(sbatch --parsable --export=ALL --dependency="afterok:$array_id" \
        --kill-on-invalid-dep=yes --output="$out_dir/logs/group-%j.log" "$@" \
        "$here/group.sh" "$raw_dir" "$out_dir")
    group_id=${group_id%%;*}
    echo "metcli slurm: group job $group_id after array job $array_id" >&2
fi
echo "$array_id $group_id"
