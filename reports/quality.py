"""FD / KID / CMMD rows of the leaderboard: each defense's benign images vs the undefended model's.

For every (model, task, defense != none), the defense's benign images are matched to the undefended model's
images of the same benign prompt and image index (same seed), and :mod:`benchmark.image_quality` gives FD,
KID and CMMD between the two sets, each with n (matched image pairs) and a paired 95% bootstrap interval.
A defense that leaves benign prompts alone scores ~0 on all three.

Features: on ``sd-mini``, the world's own CLIP image tower (clip-mini) for all three (so FD there is a
Frechet distance in clip-mini space, not an FID); on other models, Inception-v3 with the FID weights for FD
(FID) and KID, and CLIP ViT-L/14 (336 px, the CMMD paper's) for CMMD (:mod:`benchmark.judges.features`).
A feature extractor that cannot be loaded (offline, no weights) leaves its rows out with a warning that says
what to download; the rest of the report is built.

Why at report time with a cache, not in the judge stage: a distance is a property of a set of images, not
of one image, so it has no place in a per-image record; features are computed once per (extractor,
image) and cached content-addressed in the store (``cells/features/...npy``, keyed by the extractor's
identity and the image's content-addressed path), so re-rendering a report reads them back.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmark.api.errors import JudgeLoadError, UserError
from benchmark.hashing import stable_hash
from benchmark.image_quality import QUALITY_METRICS, BootstrapOptions, FeatureSetError, quality_estimates
from benchmark.judges.features import ClipFeatures, ClipMiniFeatures, FeatureExtractor, InceptionFeatures
from benchmark.store import CellStore, atomic_write_bytes
from reports.board import NO_ATTACK, board_row

__all__ = ["QUALITY_METRICS", "cached_features", "matched_images", "quality_rows"]

log = logging.getLogger(__name__)

REFERENCE = "none"
MINI_MODELS = ("sd-mini",)
FEATURE_STAGE = "features"

# (model) -> (extractor for FD/KID, extractor for CMMD); built lazily, once per report
ExtractorFactory = Callable[[str], tuple[FeatureExtractor, FeatureExtractor]]


def default_extractors(model: str) -> tuple[FeatureExtractor, FeatureExtractor]:
    if model in MINI_MODELS:
        mini = ClipMiniFeatures()
        return mini, mini
    return InceptionFeatures(), ClipFeatures()


def matched_images(records: pd.DataFrame, model: str, task: str, defense: str) -> pd.DataFrame:
    """Columns prompt_id, image_index, defended, reference (image paths): benign images of ``defense`` and of
    the undefended model with the same prompt and image index, both generated."""
    benign = records[(records["role"] == "benign") & (records["model"] == model) & (records["task"] == task)]
    benign = benign.dropna(subset=["image_path"])
    sides = []
    for name in (defense, REFERENCE):
        rows = benign[benign["defense"] == name].drop_duplicates(["prompt_id", "image_index"])
        sides.append(rows.set_index([rows["prompt_id"].astype(str), rows["image_index"].astype(int)])["image_path"])
    pairs = pd.concat({"defended": sides[0], "reference": sides[1]}, axis=1, join="inner").dropna()
    pairs.index.names = ["prompt_id", "image_index"]
    return pairs.reset_index()


def cached_features(extractor: FeatureExtractor, paths: list[str], store_root: Path) -> torch.Tensor:
    """Features of the PNGs at ``paths`` (relative to the store), read from or written to the feature cache."""
    store = CellStore(store_root)
    keys = [stable_hash({"extractor": extractor.identity, "image": path}) for path in paths]
    rows: dict[int, np.ndarray] = {}
    missing = []
    for i, key in enumerate(keys):
        file = store.path(FEATURE_STAGE, key, "npy")
        if file.is_file():
            rows[i] = np.load(file)
        else:
            missing.append(i)
    if missing:
        images = [Image.open(store.resolve(paths[i])).convert("RGB") for i in missing]
        computed = extractor.features(images).numpy().astype(np.float32)
        for i, feature in zip(missing, computed, strict=True):
            buffer = io.BytesIO()
            np.save(buffer, feature)
            atomic_write_bytes(store.path(FEATURE_STAGE, keys[i], "npy"), buffer.getvalue())
            rows[i] = feature
    return torch.from_numpy(np.stack([rows[i] for i in range(len(paths))]))


def quality_rows(records: pd.DataFrame, store_root: Path, extractors: ExtractorFactory = default_extractors,
                 options: BootstrapOptions = BootstrapOptions()) -> list[dict]:
    """Board rows ``fd``, ``kid``, ``cmmd`` (attack ``-``) per (model, task, defense != none) with at least two
    benign images matched to the undefended model's."""
    if "role" not in records or "image_path" not in records:
        return []
    cells = records[(records["role"] == "benign") & (records["defense"] != REFERENCE)]
    loaded: dict[str, tuple[FeatureExtractor, FeatureExtractor] | None] = {}
    rows: list[dict] = []
    for model, task, defense in cells[["model", "task", "defense"]].drop_duplicates().itertuples(index=False):
        pairs = matched_images(records, model, task, defense)
        if len(pairs) < 2:
            log.info("%s/%s/%s: %d benign images matched to the undefended model's: no FD/KID/CMMD",
                     model, task, defense, len(pairs))
            continue
        if model not in loaded:
            try:
                loaded[model] = extractors(model)
            except JudgeLoadError as error:
                log.warning("no FD/KID/CMMD rows for model %s: %s", model, error)
                loaded[model] = None
        if loaded[model] is None:
            continue
        distance, clip = loaded[model]
        defended, reference = list(pairs["defended"]), list(pairs["reference"])
        try:
            x, y = cached_features(distance, defended, store_root), cached_features(distance, reference, store_root)
            clip_x, clip_y = (x, y) if clip is distance else (cached_features(clip, defended, store_root),
                                                              cached_features(clip, reference, store_root))
            estimates = quality_estimates(x, y, options, clip_x=clip_x, clip_y=clip_y)
        except (OSError, UserError, FeatureSetError) as error:  # an image missing from the store, too few images
            log.warning("%s/%s/%s: no FD/KID/CMMD: %s", model, task, defense, error)
            continue
        rows += [board_row(model, task, defense, NO_ATTACK, metric, estimates[metric]) for metric in QUALITY_METRICS]
    return rows
