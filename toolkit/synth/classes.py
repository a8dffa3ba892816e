"""What the synthetic worlds with several classes share (``--scenario almss``, ``--modality mr``).

* :func:`interleave`: each participant's class, from counts or a ratio, interleaved so
  that every prefix of the cohort keeps the ratio as well as it can;
* :func:`cohort_classes`: the classes of a cohort asked for by ``subjects`` (the default
  ratio) or ``class_counts``, with the checks of both;
* :class:`TabulatedLesions`: the part of a world's parameters that lesion placement
  (:mod:`metcli.synth.placement`) asks for, read from tables by class.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from metcli.core.errors import UsageError


def interleave(
    counts: Mapping[str, int], order: Sequence[str], total: int | None = None
) -> list[str]:
    """The class of each participant: ``counts`` (class -> participants, or a ratio when
    ``total`` is given) interleaved so that every prefix keeps the ratio as well as it can.

    Participant k gets the class furthest behind its share ((k + 1) x its fraction minus
    those it has; ties in ``order``). With ``total``, the first ``total`` of that endless
    sequence: a larger cohort starts with a smaller one.
    """
    order = list(order)
    weights = {c: int(counts.get(c, 0)) for c in order}
    size = sum(weights.values())
    if size < 1:
        raise UsageError("the cohort is empty", fix="ask for at least one participant")
    have = dict.fromkeys(order, 0)
    out = []
    for k in range(size if total is None else int(total)):
        cls = max(order, key=lambda c: ((k + 1) * weights[c] / size - have[c], -order.index(c)))
        have[cls] += 1
        out.append(cls)
    return out


def _whole(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum


def cohort_classes(
    subjects: int | None,
    class_counts: Mapping[str, int] | None,
    *,
    order: Sequence[str],
    ratio: Mapping[str, int],
    default: int,
) -> list[str]:
    """Each participant's class: the first ``subjects`` (``default`` when neither is given)
    of ``ratio`` interleaved, or ``class_counts`` interleaved; ``order``: the world's
    classes, which break ties and are the only ones accepted."""
    example = ",".join(f"{c}={n}" for c, n in zip(order, (4, 2, 3)))
    if subjects is not None and class_counts is not None:
        raise UsageError(
            "give either subjects or class counts, not both",
            fix=f"--subjects N for the default ratio, or --class-counts {example},...",
        )
    if class_counts is None:
        total = default if subjects is None else subjects
        if not _whole(total, 1):
            raise UsageError(
                f"subjects must be a whole number >= 1, got {total!r}",
                fix="ask for at least one participant",
            )
        return interleave(ratio, order, total=int(total))
    for cls, count in class_counts.items():
        if cls not in order:
            raise UsageError(
                f"class {cls!r} is not one of {', '.join(order)}",
                fix=f"give counts of these classes, for example {example}",
            )
        if not _whole(count, 0):
            raise UsageError(
                f"the count of {cls} must be a whole number >= 0, got {count!r}",
                fix=f"give counts such as {example}",
            )
    return interleave(class_counts, order)


class TabulatedLesions:
    """Lesion placement's questions, answered from a world's tables by class: the mean
    number of lesions (``lesion_counts``), their mean diameter (``diameters``), no HU
    shift and one texture SD (``lesion_texture_sd``). ``known(cls)`` returns a known
    class (or lesion type) and refuses any other."""

    lesion_counts: Mapping[str, float]
    diameters: Mapping[str, float]
    lesion_texture_sd: float

    def known(self, cls: str) -> str:  # pragma: no cover - each world defines it
        raise NotImplementedError

    def lesion_mean(self, cls: str) -> float:
        return float(self.lesion_counts[self.known(cls)])

    def diameter_mean(self, cls: str) -> float:
        return float(self.diameters[self.known(cls)])

    def hu_shift(self, cls: str) -> float:
        self.known(cls)
        return 0.0

    def texture_sd(self, cls: str) -> float:
        self.known(cls)
        return float(self.lesion_texture_sd)
