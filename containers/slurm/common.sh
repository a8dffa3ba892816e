# shellcheck shell=bash
# Sourced by participant.sh and group.sh: how metcli is called, and the participant list.
#
# METCLI_RUNNER    apptainer (default): `apptainer run [--nv] --bind ... $METCLI_SIF ...`
#                  local: a plain installation, `$METCLI_CMD ...`
# METCLI_SIF       the image (default: metcli.sif in the submission folder)
# METCLI_CMD       the metcli command of METCLI_RUNNER=local (default: metcli on PATH);
#                  it may carry words, e.g. "python -m metcli.cli.main"
# METCLI_APPTAINER_ARGS  more options for `apptainer run` (split at spaces), e.g. "--cleanenv";
#                  --nv is added when the job has GPUs (SLURM_JOB_GPUS or CUDA_VISIBLE_DEVICES)
# METCLI_PARTICIPANTS  the participants to process: a file with one label a line, or a TSV
#                  with a participant_id column (default: RAW_DIR/participants.tsv)

die() {
    echo "metcli slurm: error: $*" >&2
    exit 1
}

# The participants list: METCLI_PARTICIPANTS, or RAW_DIR/participants.tsv.
participants_list() {
    echo "${METCLI_PARTICIPANTS:-$1/participants.tsv}"
}

# Stop with one line unless the participants list of RAW_DIR exists (call it first).
require_participants_list() {
    local list
    list=$(participants_list "$1")
    [[ -f $list ]] || die "$list: no participants list; write participants.tsv (participant_id column) or set METCLI_PARTICIPANTS to a file of labels"
}

# The labels of the participants list, one a line, in file order.
participant_ids() {
    awk -F '\t' '
        { sub(/\r$/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i
                  if (col) next; col = 1 }
        $col != "" && $col !~ /^#/ { print $col }
    ' "$(participants_list "$1")"
}

# The labels array task TASK runs: entries TASK*PER_TASK .. (TASK+1)*PER_TASK-1 of the list.
task_participants() {
    local raw_dir=$1 task=$2 per_task=$3
    participant_ids "$raw_dir" | awk -v first="$((task * per_task + 1))" \
        -v last="$(((task + 1) * per_task))" 'NR >= first && NR <= last'
}

# Run metcli with the given arguments through the chosen runner. Folders to bind into the
# image: METCLI_BIND (set by the job scripts: inputs read-only, outputs read-write).
metcli_run() {
    case ${METCLI_RUNNER:-apptainer} in
        local)
            local -a cmd
            read -r -a cmd <<< "${METCLI_CMD:-metcli}"
            command -v "${cmd[0]}" >/dev/null \
                || die "${cmd[0]}: not found; install metcli (pip install metcli) or set METCLI_CMD to its path"
            "${cmd[@]}" "$@"
            ;;
        apptainer)
            local sif=${METCLI_SIF:-metcli.sif}
            [[ -f $sif ]] || die "$sif: no such image; build it with 'apptainer build metcli.sif Apptainerfile' and set METCLI_SIF to its path (or METCLI_RUNNER=local)"
            command -v apptainer >/dev/null \
                || die "apptainer: not found on ${HOSTNAME:-this node}; load its module (module load apptainer) or set METCLI_RUNNER=local"
            local -a opts=() extra
            read -r -a extra <<< "${METCLI_APPTAINER_ARGS:-}"
            if [[ -n ${SLURM_JOB_GPUS:-}${CUDA_VISIBLE_DEVICES:-} ]]; then
                opts+=(--nv)
            fi
            if [[ -n ${METCLI_BIND:-} ]]; then
                opts+=(--bind "$METCLI_BIND")
            fi
            apptainer run "${opts[@]}" "${extra[@]}" "$sif" "$@"
            ;;
        *)
            die "METCLI_RUNNER=${METCLI_RUNNER}: unknown runner; use apptainer or local"
            ;;
    esac
}

# METCLI_BIND for the job: the raw data read-only, the output folder read-write, and the
# folders of TMPDIR, METCLI_HOME and METCLI_SEG_DIR when they are set.
set_binds() {
    local raw_dir=$1 out_dir=$2
    METCLI_BIND="$raw_dir:$raw_dir:ro,$out_dir"
    if [[ -n ${TMPDIR:-} && $TMPDIR != /tmp ]]; then
        METCLI_BIND+=",$TMPDIR"
    fi
    if [[ -n ${METCLI_HOME:-} ]]; then
        METCLI_BIND+=",$METCLI_HOME:$METCLI_HOME:ro"
    fi
    if [[ -n ${METCLI_SEG_DIR:-} ]]; then
        METCLI_BIND+=",$METCLI_SEG_DIR:$METCLI_SEG_DIR:ro"
    fi
    export METCLI_BIND
}

# The folders a run writes, under OUT_DIR (the same in participant.sh and group.sh).
# shellcheck disable=SC2034  # the scripts that source this file use them
set_folders() {
    local out_dir=$1
    SEG_DIR=${METCLI_SEG_DIR:-$out_dir/derivatives/segment}
    LESIONS_DIR=$out_dir/derivatives/lesions
    FEATURES_DIR=$out_dir/derivatives/radiomics
    MODELS_DIR=$out_dir/derivatives/models
    EVALUATION_DIR=$out_dir/derivatives/evaluation
}
