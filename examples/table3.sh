#!/usr/bin/env bash
# Table 3 of the 2023 study for one run: every model's AUC with its 95% CI and its
# accuracy with its 95% CI, at the patient level (AUC: DeLong; accuracy: patient
# bootstrap) and the lesion level (AUC: Obuchowski's clustered CI; accuracy: cluster
# bootstrap), read from the metrics.tsv that `metcli evaluate` writes.
#
#   examples/table3.sh demo/derivatives/evaluation/metrics.tsv
set -euo pipefail
metrics="${1:?usage: table3.sh EVALUATION_DIR/metrics.tsv}"
[ -f "$metrics" ] || { echo "table3.sh: $metrics: no such file (run metcli evaluate first)" >&2; exit 1; }
awk -F'\t' '
NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
    model = $col["model"]; level = $col["level"]; metric = $col["metric"]; method = $col["ci_method"]
    want = (level == "patient" && ((metric == "auc" && method == "delong") ||
                                   (metric == "accuracy" && method == "patient_bootstrap"))) ||
           (level == "lesion" && ((metric == "auc" && method == "obuchowski") ||
                                  (metric == "accuracy" && method == "cluster_bootstrap")))
    if (!want) next
    key = level SUBSEP model
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    cell[key, metric] = sprintf("%.2f (%.2f-%.2f)", $col["estimate"], $col["ci_lower"], $col["ci_upper"])
}
END {
    printf "%-32s %-8s %-20s %-20s\n", "model", "level", "AUC (95% CI)", "accuracy (95% CI)"
    for (pass = 1; pass <= 2; pass++) {
        for (i = 1; i <= n; i++) {
            split(order[i], parts, SUBSEP)
            if ((pass == 1) != (parts[1] == "patient")) continue
            printf "%-32s %-8s %-20s %-20s\n", parts[2], parts[1], cell[order[i], "auc"], cell[order[i], "accuracy"]
        }
    }
}' "$metrics"
