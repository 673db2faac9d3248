"""The NudeNet judge's tables, read from ``nudenet.yaml``: presets, checkpoints, class names, and what a judge
identity says about them.

Published nudity rates were measured with different NudeNet files, each run through the processing of the
code that shipped it. Recall at a given threshold differs widely between them, so "NudeNet at 0.6" names no
measurement until the checkpoint is named too. Each :class:`Checkpoint` says which file, how to check it,
where to get it, and cites the upstream lines whose processing :mod:`benchmark.judges.nudenet_processing`
reproduces; each :class:`NudeNetPreset` names the counted classes, the threshold and the checkpoint its paper
judged with.

================  ==========  ============================================================================
checkpoint        network     processing
================  ==========  ============================================================================
wheel-320n        YOLOv8 320  nudenet 3.4 (the wheel's ``320n.onnx``): BGR planes, bottom/right pad, 0.2/0.25
                              cuts. The default.
v3-best           YOLOv8 320  NudeNet 3.0.0-dev3 ``best.onnx`` as UnlearnDiffAtk runs it: RGB, stretched
                              resize, 0.5 candidate cut, NMS(0.5, 0.5), unclipped boxes.
v3-best-padded    YOLOv8 320  the same ``best.onnx`` with nudenet 3.0.8's processing, as RECE runs it: RGB,
                              aspect kept, centred black padding, 0.2 cut, NMS(0.25, 0.45), rounded boxes.
v2-detector       RetinaNet   NudeNet 2 ``detector_v2_default_checkpoint.onnx``: BGR minus caffe means,
                              min side 800 / max side 1333, NHWC, NMS inside the graph; v2 class names.
v2-classifier     2-way CNN   NudeNet 2 ``classifier_model.onnx``: RGB, nearest resize to 256x256, /255,
                              NHWC; softmax over (unsafe, safe).
================  ==========  ============================================================================

Why it matters (NudeNet's issue tracker): issue #159 measured, on 10,000 NSFW images at threshold 0.6, 26.3%
flagged by the v3.4.2 320n detector, 25.4% by 640m, 40.4% by the v2 detector and 100% by the v2 classifier
(the images came from that classifier, as the reporter notes); issue #150 finds 640m flagging fewer images than
320n; issue #117 traces Python-vs-browser differences to preprocessing, which commit 9e24b61 changed (the
v3-best-padded processing; SafeGen's issue #7 names that commit as the one their numbers used).

Hashes: the sha256 of the wheel's ``320n.onnx`` (nudenet 3.4.2) is recorded; ``best.onnx`` is checked by its
git blob id (the SHA-1 git stores for ``nudenet/best.onnx`` at NudeNet tag v3.0.0-dev3, identical in RECE's
repository), since no sha256 is published for it. No hash is published for either NudeNet 2 file (GitHub
release assets of tag v0): those are checked by their input/output signature only, and say so.

The preset (with any user override spelled out) and the checkpoint actually run are part of the judge identity
stored in every record, so an ASR is never quoted without its definition, and a run with another checkpoint
than the paper's is never called a reproduction (:func:`reproduction_mismatches`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

TABLE_FILE = Path(__file__).with_name("nudenet.yaml")

Processing = Literal["nudenet-3.4", "v3-stretch", "v3-padded", "v2-retinanet", "v2-classifier"]
CheckpointKind = Literal["detector", "classifier"]
# The network side the wheel's detector was exported for; other NudeNet 3 files (640m.onnx) set input_size.
DEFAULT_INPUT_SIZE = 320


@dataclass(frozen=True)
class Citation:
    """One upstream fact: which repository, at which commit, which file and lines say it."""

    what: str
    repo: str
    commit: str
    path: str
    lines: str  # "L53" or "L29-38"

    def __str__(self) -> str:
        return f"{self.what}: {self.repo}@{self.commit[:7]} {self.path} {self.lines}"


@dataclass(frozen=True)
class Checkpoint:
    """A NudeNet weights file and the processing its publisher ran it with."""

    name: str
    kind: CheckpointKind
    processing: Processing
    file_name: str
    description: str
    get_it: str  # where the file comes from, said in every error about it
    citations: tuple[Citation, ...]
    input_size: int | None = DEFAULT_INPUT_SIZE  # fixed network side; None: follows the image (v2 detector)
    sha256: str | None = None
    git_blob_sha1: str | None = None
    shipped: bool = False  # inside the installed nudenet wheel: model_path is optional

    @property
    def hash_known(self) -> bool:
        return bool(self.sha256 or self.git_blob_sha1)


@dataclass(frozen=True)
class NudeNetPreset:
    """Which detector classes count as the concept, from which score an image is flagged, and which checkpoint
    the paper measured with.

    ``flagged = max(score of a detection whose class is in classes) >= threshold``. A preset of a classifier
    checkpoint has no classes: its score is the classifier's ``unsafe`` probability. ``citations`` give the
    upstream file and line of the checkpoint, the classes and the threshold; ``source`` says the rest in words.
    """

    name: str
    classes: tuple[str, ...]
    threshold: float
    description: str
    source: str = ""
    checkpoint: str = "wheel-320n"
    citations: tuple[Citation, ...] = ()


@dataclass(frozen=True)
class NudeNetTables:
    """Everything ``nudenet.yaml`` declares, validated."""

    v3_labels: tuple[str, ...]
    v2_to_v3: dict[str, str]
    classifier_labels: tuple[str, str]
    checkpoints: dict[str, Checkpoint]
    presets: dict[str, NudeNetPreset]
    default_checkpoint: str


class TableError(ValueError):
    """``nudenet.yaml`` is inconsistent: a packaging or editing mistake, never a user's option."""


def _citations(entries: list[list[str]], sources: Mapping[str, Mapping[str, str]], where: str) -> tuple[Citation, ...]:
    citations = []
    for entry in entries or []:
        if len(entry) != 4 or entry[1] not in sources:
            raise TableError(f"{TABLE_FILE.name}: {where}: citation {entry!r} must be [what, source, path, lines] "
                             f"with source one of {sorted(sources)}")
        what, source, path, lines = entry
        citations.append(Citation(what, sources[source]["repo"], str(sources[source]["commit"]), path, str(lines)))
    return tuple(citations)


def _checkpoint(name: str, entry: Mapping[str, Any], sources: Mapping[str, Any]) -> Checkpoint:
    if entry.get("kind") not in get_args(CheckpointKind) or entry.get("processing") not in get_args(Processing):
        raise TableError(f"{TABLE_FILE.name}: checkpoint {name}: kind must be one of {get_args(CheckpointKind)} and "
                         f"processing one of {get_args(Processing)}")
    return Checkpoint(
        name=name, kind=entry["kind"], processing=entry["processing"], file_name=entry["file"],
        description=entry["description"], get_it=entry["get_it"],
        citations=_citations(entry.get("citations"), sources, f"checkpoint {name}"),
        input_size=entry["input_size"], sha256=entry.get("sha256"), git_blob_sha1=entry.get("git_blob_sha1"),
        shipped=bool(entry.get("shipped", False)),
    )


def _classes(names: list[str], groups: Mapping[str, list[str]], labels: tuple[str, ...], where: str) -> tuple[str, ...]:
    """A preset's ``classes``: group names expand in place, in order; every class must be a v3 label."""
    expanded = [member for name in names for member in (groups.get(name) or [name])]
    unknown = [name for name in expanded if name not in labels]
    if unknown:
        raise TableError(f"{TABLE_FILE.name}: {where}: {unknown} are neither class groups nor v3 labels")
    return tuple(expanded)


def _preset(name: str, entry: Mapping[str, Any], data: Mapping[str, Any], labels: tuple[str, ...]) -> NudeNetPreset:
    where = f"preset {name}"
    if entry.get("checkpoint") not in data["checkpoints"]:
        raise TableError(f"{TABLE_FILE.name}: {where}: checkpoint {entry.get('checkpoint')!r} is not declared")
    return NudeNetPreset(
        name=name, classes=_classes(entry["classes"], data["class_groups"], labels, where),
        threshold=float(entry["threshold"]), description=entry["description"], source=entry.get("source", ""),
        checkpoint=entry["checkpoint"], citations=_citations(entry.get("citations"), data["sources"], where),
    )


def load_tables(path: Path = TABLE_FILE) -> NudeNetTables:
    """Read and check ``nudenet.yaml`` (a :class:`TableError` names what is inconsistent)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    labels = tuple(data["labels"]["v3"])
    v2_to_v3 = dict(data["labels"]["v2_to_v3"])
    if set(v2_to_v3.values()) - set(labels):
        raise TableError(f"{path.name}: labels.v2_to_v3 maps onto {sorted(set(v2_to_v3.values()) - set(labels))}, "
                         "which are not v3 labels")
    classifier = tuple(data["labels"]["classifier"])
    if len(classifier) != 2:
        raise TableError(f"{path.name}: labels.classifier must list the two outputs (unsafe, safe) in order")
    checkpoints = {name: _checkpoint(name, entry, data["sources"]) for name, entry in data["checkpoints"].items()}
    presets = {name: _preset(name, entry, data, labels) for name, entry in data["presets"].items()}
    if data["default_checkpoint"] not in checkpoints:
        raise TableError(f"{path.name}: default_checkpoint {data['default_checkpoint']!r} is not declared")
    return NudeNetTables(labels, v2_to_v3, classifier, checkpoints, presets,  # type: ignore[arg-type]
                         data["default_checkpoint"])


TABLES = load_tables()
V3_LABELS: tuple[str, ...] = TABLES.v3_labels
V2_TO_V3: dict[str, str] = TABLES.v2_to_v3
V2_LABELS: tuple[str, ...] = tuple(V2_TO_V3)
CLASSIFIER_LABELS: tuple[str, str] = TABLES.classifier_labels
CHECKPOINTS: dict[str, Checkpoint] = TABLES.checkpoints
PRESETS: dict[str, NudeNetPreset] = TABLES.presets
DEFAULT_CHECKPOINT: str = TABLES.default_checkpoint


def resolve_checkpoint(name: str) -> Checkpoint:
    if name not in CHECKPOINTS:
        raise ValueError(f"Unknown NudeNet checkpoint {name!r}; checkpoints: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[name]


# -- identity -----------------------------------------------------------------------------------------------------


def identity_version(checkpoint: Checkpoint, package_version: str, input_size: int) -> str:
    """The ``judge_version`` a record carries. The wheel keeps its historical form (``nudenet-3.4.2``, with
    ``@S`` for another input size) so that earlier records and cell keys stay valid; every other checkpoint is
    spelled ``nudenet:<checkpoint>``."""
    if checkpoint.name == DEFAULT_CHECKPOINT:
        version = f"nudenet-{package_version}"
        return version if input_size == 320 else f"{version}@{input_size}"
    return f"nudenet:{checkpoint.name}"


def _field(identity: Any, attribute: str, key: str, default: Any = "") -> Any:
    """An identity's field: a :class:`JudgeIdentity` attribute or a record's ``judge_*`` key."""
    if isinstance(identity, Mapping):
        return identity.get(key, identity.get(attribute, default))
    return getattr(identity, attribute, default)


def checkpoint_of(identity: Any) -> str:
    """The checkpoint a judge identity (a :class:`JudgeIdentity` or a record's ``judge_*`` fields) was measured
    with: a registry name, or ``"custom"`` for the wheel's processing on another file (e.g. 640m.onnx)."""
    version = str(_field(identity, "version", "judge_version"))
    if version.startswith("nudenet:"):
        name = version.split(":", 1)[1]
        return name if name in CHECKPOINTS else "custom"
    wheel = CHECKPOINTS[DEFAULT_CHECKPOINT]
    weights = str(_field(identity, "weights_hash", "judge_weights_hash"))
    is_wheel_file = bool(weights) and wheel.sha256 is not None and wheel.sha256.startswith(weights)
    return DEFAULT_CHECKPOINT if version.startswith("nudenet-") and "@" not in version and is_wheel_file else "custom"


def reproduction_mismatches(identity: Any, preset: str) -> list[str]:
    """Why records with this judge identity do not reproduce ``preset`` as its paper measured it (empty: they
    do). Checks the judge, the preset name (no overrides), the threshold and the checkpoint; accepts a
    :class:`~benchmark.api.judge.JudgeIdentity` or a record's ``judge``/``judge_preset``/``judge_threshold``/
    ``judge_version``/``judge_weights_hash`` fields."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown NudeNet preset {preset!r}; presets: {', '.join(PRESETS)}")
    wanted = PRESETS[preset]
    reasons = []
    judge = _field(identity, "name", "judge", None)
    if judge != "nudenet":
        reasons.append(f"judge is {judge!r}, not 'nudenet'")
    used_preset = _field(identity, "preset", "judge_preset", None)
    if used_preset != wanted.name:
        reasons.append(f"preset is {used_preset!r}, not {wanted.name!r}")
    threshold = _field(identity, "threshold", "judge_threshold", None)
    if threshold is None or abs(float(threshold) - wanted.threshold) > 1e-9:
        reasons.append(f"threshold is {threshold}, the paper's is {wanted.threshold:g}")
    used = checkpoint_of(identity)
    if used != wanted.checkpoint:
        reasons.append(f"checkpoint is {used}, the paper's is {wanted.checkpoint} "
                       f"(`--option judge:nudenet.checkpoint={wanted.checkpoint}`)")
    return reasons


def matches_preset_checkpoint(identity: Any, preset: str) -> bool:
    """True when records with this identity were judged as ``preset``'s paper judged: same preset, threshold
    and checkpoint. A run on another checkpoint is comparable in definition only, never a reproduction."""
    return not reproduction_mismatches(identity, preset)
