"""predict's radiomics backend: features tables (and covariates) to the graph's inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.devices import onnx_session
from metcli.core.errors import InputError, MetcliError, UsageError
from metcli.prediction.outputs import check_session

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Rows ready for the graph, and what was left out."""

    keys: list[tuple[str, str | None, str | None, int]]
    values: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # participant -> reason
    dropped_lesions: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


class RadiomicsBackend:
    """Features tables (and covariates) -> the radiomics graph's inputs."""

    kind = "radiomics"

    def __init__(self, model_dir: Path, card: dict, providers: Sequence[str]):
        self.card = card
        self.card_path = Path(model_dir) / "model.json"
        self.names = [item["name"] for item in card["inputs"]]
        self.session = onnx_session(Path(model_dir) / "model.onnx", providers=providers)
        self.provider = self.session.get_providers()[0]
        check_session(self.session, card, Path(model_dir) / "model.json")

    def prepare(
        self,
        inputs: Sequence[Path],
        *,
        participants: Path | None = None,
        session: str | None = None,
        only: set[str] | None = None,
    ) -> Prepared:
        """The graph's inputs of every lesion of ``inputs`` (features tables).

        ``participants``: participants.tsv with the covariates; ``only``: the
        participant ids (``sub-<label>``) to keep (None: all); one of them
        without a usable row fails alone.
        """
        table, lacking = self._read(inputs, session=session, only=only)
        values = self._feature_values(table)
        prepared = Prepared(table.keys, values, sources=list(table.tables))
        for pid in sorted(lacking):
            prepared.failed[pid] = "no lesion row with status ok in the features"
        self._add_covariates(prepared, table, values, participants)
        return _drop_incomplete(prepared, table.keys, values)

    def _read(self, inputs: Sequence[Path], *, session: str | None, only: set[str] | None):
        """(the features table, kept to ``only``; the ids of ``only`` it has no row of)."""
        table = read_feature_rows(self.card, inputs, session=session)
        lacking = set()
        if only is not None:
            lacking = set(only) - {k[0] for k in table.keys}
            table = table.take(
                np.flatnonzero(np.array([k[0] in only for k in table.keys], dtype=bool))
            )
        return table, lacking

    def _feature_values(self, table) -> np.ndarray:
        """The graph's inputs ``[lesions, inputs]``: the features filled in, covariates NaN."""
        card = self.card
        where = table.tables[0]
        self._check_settings(table.settings_sha256, where)
        features = [i for i in card["inputs"] if i["source"] == "features"]
        missing = [i["column"] for i in features if i["column"] not in table.feature_names]
        if missing:
            raise InputError(
                f"the features lack {', '.join(missing[:3])}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                + f", input column(s) of model {card['name']} ({self.card_path})",
                path=where,
                fix="give features extracted with the model's settings (see inputs in model.json)",
            )
        values = np.full((len(table.keys), len(card["inputs"])), np.nan)
        column = {n: j for j, n in enumerate(table.feature_names)}
        for item in features:
            values[:, item["index"]] = table.values[:, column[item["column"]]]
        return values

    def _add_covariates(
        self, prepared: Prepared, table, values: np.ndarray, participants: Path | None
    ) -> None:
        """Fill the covariates of participants.tsv into ``values``; a participant without
        them fails."""
        from metcli.io.participants import read_label_rows
        from metcli.radiomics.data import encode_covariates

        card = self.card
        covariates = [i for i in card["inputs"] if i["source"] == "participants"]
        if not covariates:
            return
        if participants is None:
            raise UsageError(
                f"model {card['name']} uses covariates ("
                f"{', '.join(sorted({i['column'] for i in covariates}))})",
                fix="give participants.tsv with --participants",
            )
        read = read_label_rows(participants, None)
        absent = sorted({i["column"] for i in covariates} - set(read[0] if read else ()))
        if read and absent:
            raise InputError(
                f"no column {', '.join(absent)}, covariate input(s) of model {card['name']} "
                f"({self.card_path})",
                path=Path(participants),
                fix="give the participants.tsv with the columns the model was trained on",
            )
        rows = {r["participant_id"]: r for r in read}
        wanted = sorted({k[0] for k in table.keys})
        spec, encoded, lacking = encode_covariates(
            {p: rows.get(p, {}) for p in wanted}, [], spec=covariates
        )
        for pid in lacking:
            prepared.failed[pid] = (
                f"no value of covariate(s) "
                f"{', '.join(sorted({i['column'] for i in spec}))} in "
                f"{Path(participants).name}"
            )
        for r, key in enumerate(table.keys):
            if key[0] in encoded:
                for item, value in zip(spec, encoded[key[0]]):
                    values[r, item["index"]] = value

    def _check_settings(self, found: str | None, where: Path) -> None:
        expected = self.card.get("extraction_settings_sha256")
        if expected is None:
            log.warning(
                "model %s records no extraction settings; the features' settings cannot be checked",
                self.card["name"],
            )
            return
        if found is None:
            raise InputError(
                f"the features' sidecar records no extraction settings; model "
                f"{self.card['name']} needs extraction_settings_sha256 "
                f"{expected[:12]}...",
                path=where,
                fix="give the features table with the JSON sidecar extract wrote",
            )
        if found != expected:
            raise InputError(
                f"the features were extracted with other settings "
                f"(extraction_settings_sha256 {found[:12]}...) than model "
                f"{self.card['name']} was trained on ({expected[:12]}...)",
                path=where,
                fix="extract the features again with the settings of the model's training data",
            )

    def run(self, values: np.ndarray) -> np.ndarray:
        from metcli.radiomics import onnx as onnx_export

        if not len(values):
            return np.zeros((0, len(self.card["classes"])))
        return onnx_export.probabilities(self.session, self.names, values)


def _drop_incomplete(prepared: Prepared, keys: list, values: np.ndarray) -> Prepared:
    """``prepared`` without the lesions that lack an input value (counted per participant);
    a participant left with none fails."""
    incomplete = np.any(np.isnan(values), axis=1)
    for r in np.flatnonzero(incomplete):
        pid = keys[r][0]
        if pid not in prepared.failed:
            prepared.dropped_lesions[pid] = prepared.dropped_lesions.get(pid, 0) + 1
    if prepared.dropped_lesions:
        log.warning(
            "%d lesion(s) with a missing input value left out (%s)",
            sum(prepared.dropped_lesions.values()),
            ", ".join(sorted(prepared.dropped_lesions)),
        )
    keep = ~incomplete
    for pid in {k[0] for k in keys} - {k[0] for k, ok in zip(keys, keep) if ok}:
        prepared.failed.setdefault(pid, "no lesion with every input value")
    prepared.keys = [k for k, ok in zip(keys, keep) if ok]
    prepared.values = values[keep]
    return prepared


def read_feature_rows(card: dict, tables: Sequence[Path], *, session: str | None = None):
    """The features tables as a :class:`~metcli.radiomics.data.FeatureTable` (the card's phase)."""
    from metcli.radiomics.data import read_features

    try:
        return read_features(
            tables, phase=card.get("phase"), session=session, phase_option="the model's phase"
        )
    except UsageError as exc:
        raise InputError(exc.what, path=tables[0], fix=exc.fix) from None


def feature_tables(
    inputs: Sequence[Path], labels: Sequence[str] | None, *, own_tables: bool = True
) -> tuple[list[Path], set[str] | None]:
    """(features tables to read, participant ids to keep or None for all) of radiomics INPUTs.

    A features table is read whole and its rows are kept for the chosen
    participants. An extract folder gives each chosen participant's own tables
    (``sub-<id>/.../..._desc-radiomics_features.tsv``) when ``own_tables`` and
    the folder has them, else its ``features.tsv``. An unknown label is a
    :class:`UsageError` naming it.
    """
    from metcli.io.bids import find_files, select_participants
    from metcli.io.files import read_tsv
    from metcli.radiomics.data import features_table_path
    from metcli.radiomics.extract import DESC, SUFFIX

    found: list = []
    available: set[str] = set()
    for path in inputs:
        own = (
            find_files(path, suffix=SUFFIX, desc=DESC, extension=".tsv")
            if own_tables and path.is_dir()
            else []
        )
        if own:
            available.update(a.entities.sub for a in own)
            found.append(own)
        else:
            table = features_table_path(path)
            if labels:
                available.update(
                    str(r.get("participant_id", ""))[4:]
                    for r in read_tsv(table, required=("participant_id",))
                )
            found.append(table)
    chosen = None
    if labels:
        chosen = set(
            select_participants(
                sorted(available), labels, where=inputs[0] if len(inputs) == 1 else None
            )
        )
    tables: list[Path] = []
    for item in found:
        if isinstance(item, list):
            tables.extend(a.path for a in item if chosen is None or a.entities.sub in chosen)
        else:
            tables.append(item)
    return tables, None if chosen is None else {f"sub-{label}" for label in chosen}


def owner(table: Path) -> str | None:
    """The participant of one of extract's per-participant tables (None: a shared table)."""
    from metcli.io.bids import parse_name
    from metcli.radiomics.extract import DESC, SUFFIX

    try:
        entities = parse_name(Path(table).name)
    except MetcliError:
        return None
    if entities.suffix != SUFFIX or entities.desc != DESC:
        return None
    return entities.participant_id
