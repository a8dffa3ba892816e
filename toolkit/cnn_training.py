"""``train-cnn``: the study's lesion-slice CNN (MONAI), exported to ONNX with a model card.

Pipeline (:func:`train_cnn`):

* Every kept lesion (split-lesions' table) of every participant with a label
  gives its preprocessed axial slices (:mod:`metcli.lesion_slices`), computed
  once per run and kept in memory.
* Patients (never lesions) are split into train, val and test: from a split
  file (DESIGN.md's format, read by :func:`metcli.radiomics_data.read_split`,
  which refuses a patient in two sets) or at random, stratified by class, with
  ``val_patients`` and ``test_patients``. The split is written to ``split.tsv``.
* A MONAI network (``densenet121``: ``monai.networks.nets.DenseNet121``;
  ``resnet18``: ``monai.networks.nets.resnet18``; 2D, one input channel)
  learns from scratch with cross-entropy weighted by the inverse class
  frequency of the training slices and MONAI's ``RandAffine`` augmentation
  (rotation, shear, zoom, shift). The validation loss is computed each epoch;
  the epoch with the lowest one is kept (``checkpoint.pt``, a state_dict).
* Aggregation: a lesion's probabilities are the mean of its slices'
  probabilities; a patient's are the mean of its lesions'. A binary model
  predicts the positive class when its probability is at or above 0.5 (the
  study's cut-off; ``threshold_source`` says so); several classes: the most
  probable one.
* Export: ``model/model.onnx`` (input ``image`` float32 [batch, 1, size,
  size], output ``probabilities`` [batch, classes], dynamic batch) checked
  against PyTorch with ONNX Runtime (more than 1e-4 apart fails the run),
  ``model/model.json`` (the card), validation and test predictions.

On the CPU the same inputs and seed give the same ``training_log.tsv`` and weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metcli.errors import InputError, OutputError, UsageError

log = logging.getLogger(__name__)

ARCHITECTURES = ("densenet121", "resnet18")
#: Smallest input side each network accepts (its downsampling must leave at least 1 pixel).
MIN_SIZE = {"densenet121": 32, "resnet18": 16}
THRESHOLD = 0.5
PARITY_TOLERANCE = 1e-4
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "best"]
PREDICTION_BASE = ["participant_id", "lesion_id", "level", "model", "set"]


@dataclass
class Sample:
    """The slices of one lesion with its patient and label."""

    participant_id: str
    lesion_id: int
    label: int
    images: np.ndarray


@dataclass
class CnnResult:
    model_dir: Path
    skipped: bool = False
    excluded: dict[str, str] = field(default_factory=dict)
    seconds_per_epoch: float | None = None
    max_abs_difference: float | None = None


def check_options(*, arch: str, size: int, epochs: int, batch_size: int, lr: float,
                  val_patients: int, test_patients: int | None, device: str) -> None:
    if arch not in ARCHITECTURES:
        raise UsageError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    if size < MIN_SIZE[arch]:
        raise UsageError(f"--size {size} is too small for {arch}, which needs at least "
                         f"{MIN_SIZE[arch]} pixels", fix=f"give --size {MIN_SIZE[arch]} or more")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    if val_patients < 1:
        raise UsageError(f"--val-patients must be at least 1, got {val_patients}",
                         fix="the best epoch is chosen on the validation patients")
    if test_patients is not None and test_patients < 0:
        raise UsageError(f"--test-patients must be 0 or more, got {test_patients}")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")


def require_libraries() -> None:
    """torch and MONAI are optional (the ``cnn`` extra): a clear error when missing."""
    from importlib.util import find_spec

    missing = [name for name in ("torch", "monai") if find_spec(name) is None]
    if missing:
        raise UsageError(f"train-cnn needs {' and '.join(missing)}, which is not installed",
                         fix="pip install 'metcli[cnn]' (torch and monai)")


def resolve_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but PyTorch sees no CUDA GPU",
                         fix="use --device cpu or auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ----------------------------------------------------------------------------- data
@dataclass
class Job:
    """One participant's CT, lesion map, lesion table and kept lesion ids."""

    participant_id: str
    ct: Path
    lesion_map: Path
    lesion_table: Path
    lesion_ids: list[int]


def find_jobs(raw_dir: Path, lesions_dir: Path, labels: dict[str, str],
              excluded: dict[str, str]) -> list[Job]:
    """Pair every labelled participant's lesion map with its CT; note who is left out."""
    from metcli.bids import find_files
    from metcli.extract import find_lesion_maps, kept_lesion_ids

    chosen = [p[4:] for p in labels]
    maps = find_lesion_maps(Path(lesions_dir), chosen)
    cts = {a.entities.key: a for a in find_files(Path(raw_dir), suffix="ct",
                                                 participants=chosen)}
    by_patient: dict[str, list] = {}
    for m in maps:
        by_patient.setdefault(m.entities.participant_id, []).append(m)
    jobs = []
    for pid in sorted(labels):
        found = by_patient.get(pid, [])
        if len(found) != 1:
            excluded[pid] = ("no lesion map" if not found else
                             "several lesion maps (sessions or phases); one is needed")
            log.warning("%s left out: %s", pid, excluded[pid])
            continue
        lesion_map = found[0]
        ct = cts.get(lesion_map.entities.key)
        if ct is None:
            raise InputError(f"no CT for the lesion map {lesion_map.path.name}", path=raw_dir,
                             fix="give the raw folder the lesions were made from")
        table = lesion_map.path.with_name(lesion_map.path.name[: -len(".nii.gz")] + ".tsv")
        if not table.is_file():
            raise InputError("the lesion table beside the lesion map is missing", path=table,
                             fix="run split-lesions again for this participant")
        ids = kept_lesion_ids(table)
        if not ids:
            excluded[pid] = "no kept lesion"
            log.warning("%s left out: its lesion map has no kept lesion", pid)
            continue
        jobs.append(Job(pid, ct.path, lesion_map.path, table, ids))
    return jobs


def load_samples(jobs: Sequence[Job], labels: dict[str, str], classes: list[str],
                 settings) -> list[Sample]:
    """The preprocessed slices of every kept lesion (computed once per run)."""
    from metcli.fileio import read_image
    from metcli.lesion_slices import lesion_slices

    samples = []
    for job in jobs:
        per_lesion = lesion_slices(read_image(job.ct, what="CT"),
                                   read_image(job.lesion_map, what="lesion map"),
                                   lesion_ids=job.lesion_ids, settings=settings,
                                   ct_path=job.ct, lesion_map_path=job.lesion_map)
        label = classes.index(labels[job.participant_id])
        samples.extend(Sample(job.participant_id, s.lesion_id, label, s.images)
                       for s in per_lesion)
    return samples


def _take(patients: list[str], labels: dict[str, str], n: int, rng) -> list[str]:
    """n patients, taken in turn from each class's shuffled list (stratified)."""
    pools = {c: list(rng.permutation(sorted(p for p in patients if labels[p] == c)))
             for c in sorted(set(labels[p] for p in patients))}
    chosen: list[str] = []
    while len(chosen) < n and any(pools.values()):
        for c in pools:
            if pools[c] and len(chosen) < n:
                chosen.append(str(pools[c].pop()))
    return sorted(chosen)


def plan_split(labels: dict[str, str], *, split: Path | None, val_patients: int,
               test_patients: int | None, seed: int) -> dict[str, str]:
    """participant -> train, val or test (by patient; split file or stratified at random)."""
    if split is not None:
        from metcli.radiomics_data import read_split

        sets = read_split(Path(split)).sets
        missing = sorted(p for p in labels if p not in sets)
        if missing:
            log.warning("%d participant(s) not in the split file, left out: %s", len(missing),
                        ", ".join(missing))
        plan = {p: sets[p] for p in labels if p in sets}
    else:
        rng = np.random.default_rng(seed)
        everyone = sorted(labels)
        wanted_test = 8 if test_patients is None else test_patients
        if wanted_test + val_patients >= len(everyone):
            raise UsageError(f"--test-patients {wanted_test} and --val-patients {val_patients} "
                             f"leave no training patient of {len(everyone)}",
                             fix="lower them or add patients")
        test = _take(everyone, labels, wanted_test, rng)
        rest = [p for p in everyone if p not in test]
        val = _take(rest, labels, val_patients, rng)
        plan = {p: "test" if p in test else "val" if p in val else "train" for p in everyone}
    for which in ("train", "val"):
        if not any(s == which for s in plan.values()):
            raise InputError(f"the split has no {which} patient", path=split,
                             fix=f"put at least one patient in the {which} set")
    for c in sorted(set(labels.values())):
        if not any(labels[p] == c and s == "train" for p, s in plan.items()):
            raise InputError(f"the training set has no patient of class {c}", path=split,
                             fix="put patients of every class in the training set")
    return plan


# ----------------------------------------------------------------------------- model
def build_network(arch: str, n_classes: int):
    from monai.networks import nets

    if arch == "densenet121":
        return nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=n_classes)
    return nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=n_classes)


def _stack(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [n,1,H,W], slice labels, lesion index of each slice)."""
    images = np.concatenate([s.images for s in samples])[:, None].astype(np.float32)
    labels = np.concatenate([np.full(len(s.images), s.label) for s in samples])
    owner = np.concatenate([np.full(len(s.images), i) for i, s in enumerate(samples)])
    return images, labels.astype(np.int64), owner


def slice_probabilities(model, images: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).to(device)
            out.append(torch.softmax(model(batch), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def lesion_probabilities(slice_probs: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean slice probability per lesion (rows in sample order)."""
    return np.stack([slice_probs[owner == i].mean(axis=0) for i in range(n)])


def decide(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Binary: the positive (last) class at or above 0.5; otherwise the most probable class."""
    if len(classes) == 2:
        return [classes[1] if p[1] >= THRESHOLD else classes[0] for p in probs]
    return [classes[int(np.argmax(p))] for p in probs]


def _auc(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < n_classes:
        return None
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


def _augmenter(seed: int):
    from monai.transforms import RandAffine

    augment = RandAffine(prob=0.9, rotate_range=np.pi / 12, shear_range=(0.1, 0.1),
                         translate_range=(0.1, 0.1), scale_range=(0.1, 0.1),
                         padding_mode="zeros", mode="bilinear")
    augment.set_random_state(seed=seed)
    return augment


def fit(train: Sequence[Sample], val: Sequence[Sample], *, arch: str, n_classes: int,
        epochs: int, batch_size: int, lr: float, device: str, seed: int,
        progress: Callable[[str, str], None] | None = None):
    """Train; return (best state_dict, log rows, seconds per epoch)."""
    import torch

    size = int(train[0].images.shape[-1])
    torch.manual_seed(seed)
    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_network(arch, n_classes).to(device)
    images, labels, _ = _stack(train)
    val_images, val_labels, val_owner = _stack(val)
    val_lesion_labels = np.array([s.label for s in val])
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1.0))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32,
                                                            device=device))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    augment = _augmenter(seed)
    rng = np.random.default_rng(seed)
    best, best_loss, rows, times = None, np.inf, [], []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # batch norm needs two samples; the slice comes back next epoch
            batch = np.stack([np.asarray(augment(images[i], spatial_size=(size, size)))
                              for i in idx]).astype(np.float32)
            x = torch.from_numpy(batch).to(device)
            y = torch.from_numpy(labels[idx]).to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            total += float(loss.item()) * len(idx)
        probs = slice_probabilities(model, val_images, device, batch_size)
        with torch.no_grad():
            val_loss = float(loss_fn(torch.log(torch.from_numpy(probs).clamp_min(1e-12)).to(
                device), torch.from_numpy(val_labels).to(device)).item())
        lesion = lesion_probabilities(probs, val_owner, len(val))
        predicted = np.array([int(np.argmax(p)) if n_classes > 2 else int(p[1] >= THRESHOLD)
                              for p in lesion])
        is_best = val_loss < best_loss
        if is_best:
            best_loss = val_loss
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        auc = _auc(val_lesion_labels, lesion, n_classes)
        rows.append({"epoch": epoch, "train_loss": round(total / len(images), 6),
                     "val_loss": round(val_loss, 6),
                     "val_auc": None if auc is None else round(auc, 6),
                     "val_accuracy": round(float(np.mean(predicted == val_lesion_labels)), 6),
                     "best": is_best})
        times.append(time.perf_counter() - started)
        log.info("epoch %d: train loss %.4f, val loss %.4f", epoch, rows[-1]["train_loss"],
                 val_loss)
        if progress:
            progress(f"epoch {epoch}", "done")
    if best is None:
        raise OutputError("the validation loss was never finite; no checkpoint to keep",
                          fix="lower --lr or check the input images")
    return best, rows, float(np.mean(times))


# ----------------------------------------------------------------------------- export
def export_onnx(model, size: int, sample: np.ndarray) -> tuple[bytes, float]:
    """model.onnx bytes (softmax included, dynamic batch) and its max difference to torch."""
    import io
    import warnings

    import torch

    from metcli.onnx_export import session

    class WithSoftmax(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            return torch.softmax(self.net(image), dim=1)

    wrapped = WithSoftmax(model).cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.zeros(2, 1, size, size),), buffer, dynamo=False,
                          input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=17)
    data = buffer.getvalue()
    sess = session(data)
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(sample)).numpy()
    got = sess.run(["probabilities"], {"image": sample})[0]
    difference = float(np.max(np.abs(got - expected)))
    if difference > PARITY_TOLERANCE:
        raise OutputError(f"ONNX Runtime and PyTorch differ by {difference:.2e} (more than "
                          f"{PARITY_TOLERANCE})", fix="report this with the versions in use")
    return data, difference


def prediction_rows(samples: Sequence[Sample], lesion_probs: np.ndarray, classes: list[str],
                    which: str, model_name: str) -> list[dict[str, Any]]:
    """Lesion rows, then patient rows (mean of the patient's lesion probabilities)."""
    rows = []
    for sample, probs, predicted in zip(samples, lesion_probs, decide(lesion_probs, classes)):
        row = {"participant_id": sample.participant_id, "lesion_id": sample.lesion_id,
               "level": "lesion", "model": model_name, "set": which, "predicted": predicted}
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs)})
        rows.append(row)
    for pid in sorted({s.participant_id for s in samples}):
        mean = lesion_probs[[i for i, s in enumerate(samples) if s.participant_id == pid]].mean(0)
        row = {"participant_id": pid, "lesion_id": None, "level": "patient", "model": model_name,
               "set": which, "predicted": decide(mean[None], classes)[0]}
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, mean)})
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the run
def _versions() -> dict[str, str]:
    from importlib import metadata

    from metcli.onnx_export import versions

    out = versions()
    for dist in ("torch", "monai", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def train_cnn(raw_dir, lesions_dir, out_dir, *, labels, label_column: str = "primary",
              positive_class: str | None = None, arch: str = "densenet121",
              window: tuple[float, float] = (330.0, 10.0), size: int = 224,
              fov_mm: float | None = None, context_mm: float = 0.0, epochs: int = 30,
              batch_size: int = 32, lr: float = 1e-4, val_patients: int = 5,
              test_patients: int | None = None, split: Path | None = None,
              device: str = "auto", seed: int = 0, overwrite: bool = False,
              progress: Callable[[str, str], None] | None = None) -> CnnResult:
    """Train the lesion-slice CNN and write OUT_DIR (see the module docstring).

    Writes ``split.tsv``, ``training_log.tsv``, ``val_predictions.tsv``,
    ``predictions.tsv`` (test set; absent without test patients), each with a
    JSON sidecar, and ``model/`` (``model.onnx``, ``model.json``,
    ``checkpoint.pt``). Returns a :class:`CnnResult`.
    """
    from metcli.bids import sidecar_path
    from metcli.fileio import (OutputSet, check_output_not_inside_input, dump_json_to,
                               sha256_file, write_tsv_to)
    from metcli.lesion_slices import SliceSettings
    from metcli.provenance import Step, write_dataset_description
    from metcli.radiomics_data import read_label_rows

    raw_dir, lesions_dir, out_dir = Path(raw_dir), Path(lesions_dir), Path(out_dir)
    require_libraries()
    check_options(arch=arch, size=int(size), epochs=epochs, batch_size=batch_size, lr=lr,
                  val_patients=val_patients, test_patients=test_patients, device=device)
    if split is not None and test_patients is not None:
        raise UsageError("give --test-patients or --split, not both")
    device = resolve_device(device)
    slice_settings = SliceSettings(window_width=float(window[0]), window_level=float(window[1]),
                                   size=int(size), context_mm=float(context_mm), fov_mm=fov_mm)
    check_output_not_inside_input(out_dir, [raw_dir, lesions_dir])
    rows = read_label_rows(Path(labels), label_column)
    excluded: dict[str, str] = {}
    all_labels = {}
    for row in rows:
        if row.get(label_column) in (None, ""):
            excluded[row["participant_id"]] = "no label"
        else:
            all_labels[row["participant_id"]] = str(row[label_column])
    classes = sorted(set(all_labels.values()))
    if len(classes) < 2:
        raise InputError(f"the labels hold {len(classes)} class(es); at least 2 are needed",
                         path=labels, fix=f"check the {label_column} column")
    if positive_class is not None:
        if positive_class not in classes or len(classes) != 2:
            raise UsageError(f"--positive-class {positive_class!r} is not one of the two "
                             f"classes ({', '.join(classes)})")
        classes = [c for c in classes if c != positive_class] + [positive_class]
    settings = {"arch": arch, "label_column": label_column, "classes": classes,
                "preprocessing": slice_settings.as_dict(), "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "val_patients": val_patients,
                "test_patients": test_patients, "seed": seed, "device": device,
                "threshold": THRESHOLD, "lesion_aggregate": "mean", "patient_aggregate": "mean"}
    step = Step("train-cnn", out_dir, {"raw": raw_dir, "lesions": lesions_dir}, settings)
    model_dir = out_dir / "model"
    card_path = model_dir / "model.json"
    jobs = find_jobs(raw_dir, lesions_dir, all_labels, excluded)
    files = [f for j in jobs for f in (j.ct, j.lesion_map, j.lesion_table)]
    files += [Path(labels)] + ([Path(split)] if split is not None else [])
    inputs = step.inputs(files)
    if not overwrite and step.is_done(card_path, inputs):
        return CnnResult(model_dir, skipped=True, excluded=excluded)
    plan = plan_split({j.participant_id: all_labels[j.participant_id] for j in jobs},
                      split=split, val_patients=val_patients, test_patients=test_patients,
                      seed=seed)
    samples = load_samples([j for j in jobs if j.participant_id in plan], all_labels, classes,
                           slice_settings)
    parts = {w: [s for s in samples if plan.get(s.participant_id) == w]
             for w in ("train", "val", "test")}
    write_dataset_description(out_dir, name="metcli train-cnn",
                              sources={"raw": raw_dir, "lesions": lesions_dir})

    best, log_rows, seconds = fit(parts["train"], parts["val"], arch=arch,
                                  n_classes=len(classes), epochs=epochs, batch_size=batch_size,
                                  lr=lr, device=device, seed=seed, progress=progress)
    model = build_network(arch, len(classes))
    model.load_state_dict(best)
    model.to(device)
    model_name = f"cnn-{arch}"
    predictions = {}
    for which in ("val", "test"):
        if parts[which]:
            images, _, owner = _stack(parts[which])
            probs = lesion_probabilities(slice_probabilities(model, images, device, batch_size),
                                         owner, len(parts[which]))
            predictions[which] = prediction_rows(parts[which], probs, classes, which,
                                                 model_name)
    model.cpu()
    sample = _stack(parts["val"])[0][:4]
    onnx_bytes, difference = export_onnx(model, int(size), sample)

    pred_columns = PREDICTION_BASE + [f"prob_{c}" for c in classes] + ["predicted"]
    pred_extra = {"classes": classes, "positive_class": classes[1] if len(classes) == 2
                  else None, "threshold": THRESHOLD if len(classes) == 2 else None,
                  "threshold_source": "fixed 0.5 cut-off on the mean slice probability (the "
                                      "study's rule), not tuned" if len(classes) == 2 else
                                      "most probable class"}
    counts = {w: sum(1 for s in plan.values() if s == w) for w in ("train", "val", "test")}
    with OutputSet() as outs:
        def table(rows_, columns, path, schema):
            tmp = outs.path(path)
            write_tsv_to(rows_, columns, tmp, schema=schema, where=path)
            return {path: tmp}

        split_rows = [{"participant_id": p, "set": s, "fold": None}
                      for p, s in sorted(plan.items())]
        for path, rows_, columns, schema, extra in (
                (out_dir / "split.tsv", split_rows, ["participant_id", "set", "fold"], "split",
                 None),
                (out_dir / "training_log.tsv", log_rows, LOG_COLUMNS, "training_log", None),
                (out_dir / "val_predictions.tsv", predictions.get("val"), pred_columns,
                 "predictions", pred_extra),
                (out_dir / "predictions.tsv", predictions.get("test"), pred_columns,
                 "predictions", pred_extra)):
            if rows_ is None:
                continue
            made = table(rows_, columns, path, schema)
            step.write_sidecar(outs, sidecar_path(path), inputs, made, extra=extra)
        onnx_tmp = outs.path(model_dir / "model.onnx")
        onnx_tmp.write_bytes(onnx_bytes)
        ckpt_tmp = outs.path(model_dir / "checkpoint.pt")
        import torch

        torch.save(best, ckpt_tmp)
        card = {
            "card_version": 1, "kind": "image", "name": model_name,
            "task": "binary" if len(classes) == 2 else "multiclass",
            "architecture": arch, "label_column": label_column, "classes": classes,
            "positive_class": pred_extra["positive_class"],
            "input": {"name": "image", "shape": ["batch", 1, int(size), int(size)],
                      "dtype": "float32", "channels": ["ct"]},
            "outputs": {"probabilities": "probabilities"},
            "preprocessing": slice_settings.as_dict(),
            "lesion_aggregate": "mean of slice probabilities",
            "patient_aggregate": "mean",
            "threshold": pred_extra["threshold"],
            "threshold_source": pred_extra["threshold_source"],
            "split": {"source": "split file" if split is not None else
                      "stratified at random by patient", "train_patients": counts["train"],
                      "val_patients": counts["val"], "test_patients": counts["test"],
                      "train_lesions": len(parts["train"]), "val_lesions": len(parts["val"]),
                      "test_lesions": len(parts["test"])},
            "training": {"epochs": epochs, "best_epoch": max(
                r["epoch"] for r in log_rows if r["best"]), "batch_size": batch_size, "lr": lr,
                "seed": seed, "device": device, "class_weighting": "inverse frequency",
                "augmentation": "monai RandAffine: rotation 15 deg, shear 0.1, shift 10%, "
                                "zoom 10%", "seconds_per_epoch": round(seconds, 3)},
            "versions": _versions(),
            "onnx": {"file": "model.onnx", "sha256": sha256_file(onnx_tmp),
                     "max_abs_difference": difference},
            "checkpoint": {"file": "checkpoint.pt", "sha256": sha256_file(ckpt_tmp)},
        }
        doc = step.sidecar(inputs, {model_dir / "model.onnx": onnx_tmp,
                                    model_dir / "checkpoint.pt": ckpt_tmp}, extra=card)
        dump_json_to(doc, outs.path(card_path), schema="cnn_card", where=card_path)
    return CnnResult(model_dir, excluded=excluded, seconds_per_epoch=seconds,
                     max_abs_difference=difference)


def load_checkpoint(model_dir: Path, arch: str, n_classes: int):
    """The network with the weights of ``model_dir/checkpoint.pt`` (``weights_only=True``)."""
    import torch

    model = build_network(arch, n_classes)
    model.load_state_dict(torch.load(Path(model_dir) / "checkpoint.pt", weights_only=True))
    return model.eval()
