"""train-cnn's ``--cv-folds``: the number of epochs chosen by cross-validation.

:func:`choose_epochs` runs :func:`metcli.cnn.fit.fit` on K folds of the training
patients and picks the number of epochs with the best mean validation curve,
for runs with too few validation patients to pick an epoch on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metcli.cnn.data import Sample
from metcli.cnn.fit import FitSettings, fit
from metcli.core.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class CvResult:
    """The epochs chosen by cross-validation, every fold's log rows and the mean curves."""

    epochs: int
    rows: list[dict] = field(default_factory=list)
    mean_val_loss: list[float | None] = field(default_factory=list)
    mean_val_auc: list[float | None] = field(default_factory=list)


def choose_epochs(
    train: Sequence[Sample],
    folds: dict[str, int],
    settings: FitSettings,
    *,
    state_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    progress: Callable[[str, str], None] | None = None,
) -> CvResult:
    """The number of epochs (1..``settings.epochs``) with the best mean validation curve.

    Fold f trains on the training patients of the other folds and validates on
    its own, for every epoch. The curves are averaged over folds per epoch
    (validation loss, or the AUC of the folds that have both classes); the
    first epoch with the lowest mean loss (or the highest mean AUC) wins.
    Returns the choice, every fold's log rows (with a ``fold`` column) and the
    mean curves.
    """
    k = len(set(folds.values()))
    rows = []
    for f in range(k):
        fold_train = [x for x in train if folds[x.participant_id] != f]
        fold_val = [x for x in train if folds[x.participant_id] == f]
        if not fold_train or not fold_val:
            raise InputError(
                f"cross-validation fold {f} has no "
                f"{'training' if not fold_train else 'validation'} lesion",
                fix="lower --cv-folds or add patients",
            )
        result = fit(
            fold_train,
            fold_val,
            replace(settings, patience=None, keep_last=False),
            state_path=None if state_dir is None else Path(state_dir) / f"cv-fold-{f}.pt",
            resume=resume,
            fingerprint=f"{fingerprint}:cv-fold-{f}",
            label=f"fold {f}",
            progress=progress,
        )
        rows.extend({"fold": f, **r} for r in result.rows)
    mean_loss, mean_auc = [], []
    for epoch in range(1, settings.epochs + 1):
        losses = [r["val_loss"] for r in rows if r["epoch"] == epoch]
        aucs = [r["val_auc"] for r in rows if r["epoch"] == epoch and r["val_auc"] is not None]
        mean_loss.append(float(np.mean(losses)))
        mean_auc.append(float(np.mean(aucs)) if aucs else None)
    if settings.monitor == "auc":
        if all(a is None for a in mean_auc):
            raise InputError(
                "no cross-validation fold holds lesions of every class, so there "
                "is no validation AUC to choose the epochs on",
                fix="use --monitor loss, fewer --cv-folds or more patients",
            )
        best = max(
            range(len(mean_auc)),
            key=lambda i: (mean_auc[i] is not None, mean_auc[i] or 0.0, -mean_loss[i], -i),
        )
    else:
        best = min(range(len(mean_loss)), key=lambda i: (mean_loss[i], i))
    log.info("cross-validation chose %d epoch(s) of %d", best + 1, settings.epochs)
    return CvResult(
        best + 1,
        rows,
        [round(v, 6) for v in mean_loss],
        [None if a is None else round(a, 6) for a in mean_auc],
    )
