"""The NudeNet ONNX files: finding and checking them (the wheel's ``320n.onnx``, or a paper's checkpoint named
by ``model_path`` and checked against its published hash), and :class:`NudeNetDetector`, the batched
onnxruntime session that runs one with its checkpoint's processing (:mod:`benchmark.judges.nudenet_processing`).

onnxruntime is imported only when a detector is built: the checks here run at resolve time without it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.api.errors import JudgeLoadError
from benchmark.hashing import file_sha256
from benchmark.judges.nudenet_processing import (
    Detection,
    classifier_probabilities,
    detect_v3,
    postprocess_v2_detector,
    preprocess_v2_classifier,
    preprocess_v2_detector,
    split_v2_outputs,
)
from benchmark.judges.nudenet_tables import CHECKPOINTS, DEFAULT_CHECKPOINT, DEFAULT_INPUT_SIZE, V3_LABELS, Checkpoint

# -- file checks ----------------------------------------------------------------------------------------------


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content (``git hash-object``): SHA-1 of ``b"blob <size>\\0" + content``."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_file(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse a file whose content is not the checkpoint's published file (when its hash is known)."""
    # (published digest, how to compute it, its name, hex digits shown, suffix of a shortened one)
    checks = ((checkpoint.sha256, file_sha256, "sha256", 16, "..."),
              (checkpoint.git_blob_sha1, git_blob_sha1, "git blob id", 12, ""))
    for published, digest, what, shown, more in checks:
        if not published:
            continue  # none published (the NudeNet 2 files): the loaded model's signature is checked instead
        found = digest(path)
        if found != published:
            raise JudgeLoadError(
                f"NudeNet checkpoint {checkpoint.name}: {path} has {what} {found[:shown]}{more}, not the published "
                f"{checkpoint.file_name} ({published[:shown]}{more}); {checkpoint.get_it}"
            )


def wheel_model_path() -> Path:
    """The ``320n.onnx`` shipped inside the installed nudenet wheel (found without importing nudenet,
    whose ``__init__`` would import onnxruntime just to locate a file)."""
    import importlib.util

    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeLoadError(
            "The nudenet judge needs the `nudenet` package, whose wheel ships the 320n.onnx detector; install "
            "it with `pip install nudenet` (nothing is downloaded at run time)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not path.is_file():
        raise JudgeLoadError(
            f"nudenet is installed but its detector {path} is missing; reinstall it with "
            "`pip install --force-reinstall nudenet`"
        )
    return path


def _wheel_labels() -> tuple[str, ...]:
    """The class order of the installed nudenet (its module-level ``__labels``), else our copy."""
    try:
        import nudenet.nudenet as module

        labels = getattr(module, "__labels", None)
    except ImportError:  # pragma: no cover - nudenet missing is reported by wheel_model_path
        labels = None
    return tuple(labels) if labels else V3_LABELS


def nudenet_version() -> str:
    try:
        return importlib.metadata.version("nudenet")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - e.g. a vendored copy
        import nudenet

        return str(getattr(nudenet, "__version__", None) or "unknown")


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (a bad model file raises one of them; our bugs raise others)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    errors = tuple(
        value for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception)
    )
    return errors + (OSError,)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


_WHAT_TO_DO = (
    "pass a NudeNet 3 ONNX detector as model_path (e.g. `--option judge:nudenet.model_path=/path/to/640m.onnx "
    "--option judge:nudenet.input_size=640`) with input_size the size it was exported for, or leave both "
    "unset for the wheel's 320n.onnx at 320"
)


def _what_to_do_for(checkpoint: Checkpoint) -> str:
    if checkpoint.shipped:
        return _WHAT_TO_DO
    return f"checkpoint {checkpoint.name} needs {checkpoint.file_name}: {checkpoint.get_it}"


def check_model_path(model_path: str | Path | None, checkpoint: str = DEFAULT_CHECKPOINT) -> Path:
    """The ONNX file the detector will load: ``model_path`` if given, else the wheel's; a
    :class:`JudgeLoadError` if it is missing, or (for a checkpoint whose published hash is known) is another
    file. Hashes the file; no onnxruntime import, no loading."""
    spec = CHECKPOINTS[checkpoint]
    if not model_path:
        if spec.shipped:
            return wheel_model_path()
        raise JudgeLoadError(f"NudeNet checkpoint {spec.name} is not shipped with nudenet: pass its file "
                             f"{spec.file_name} as model_path; {spec.get_it}")
    path = Path(model_path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise JudgeLoadError(f"nudenet model_path {path}: {what}; {_what_to_do_for(spec)}")
    if not spec.shipped:  # the wheel's processing also runs other NudeNet 3 files (640m.onnx) by design
        verify_file(spec, path)
    return path


_V3_PROCESSING = ("nudenet-3.4", "v3-stretch", "v3-padded")


class NudeNetDetector:
    """Batched onnxruntime wrapper around a NudeNet ONNX model (default: the wheel's 320n.onnx), run with its
    checkpoint's own processing (see :mod:`benchmark.judges.nudenet_processing`).

    A file onnxruntime cannot load, or a model whose inputs/outputs are not the checkpoint's, raises
    :class:`JudgeLoadError` here rather than at the first batch.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        input_size: int = DEFAULT_INPUT_SIZE,
        device: str = "cpu",
        checkpoint: str = DEFAULT_CHECKPOINT,
    ) -> None:
        self.checkpoint = CHECKPOINTS[checkpoint]
        self.model_path = check_model_path(model_path, checkpoint)
        # what to do about a bad file: the wheel's is reinstalled, the user's replaced
        self._what_to_do = _what_to_do_for(self.checkpoint) if model_path else (
            "reinstall nudenet (`pip install --force-reinstall nudenet`), whose wheel ships 320n.onnx")
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise JudgeLoadError(
                f"The nudenet judge needs onnxruntime to run {self.model_path.name} and it cannot be imported "
                f"({_first_line(error)}); install it with `pip install onnxruntime` (or reinstall nudenet)"
            ) from None
        self.input_size = int(input_size)
        providers = ["CPUExecutionProvider"]
        wants_gpu = device.startswith("cuda") or device == "auto"
        if wants_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.model_path), providers=providers)
        except _onnxruntime_errors() as error:
            raise JudgeLoadError(
                f"NudeNet model {self.model_path}: onnxruntime cannot load it, the file is corrupt, truncated or "
                f"not an ONNX model ({_first_line(error)}); {self._what_to_do}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0] if self.session.get_inputs()[0].shape else None
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None  # a model exported for n=1
        processing = self.checkpoint.processing
        self.labels = _wheel_labels() if processing == "nudenet-3.4" else V3_LABELS
        if processing in _V3_PROCESSING:
            self._check_model()
        elif processing == "v2-retinanet":
            self._check_v2_detector()
        else:
            self._check_classifier()

    @property
    def _where(self) -> str:
        return f"NudeNet model {self.model_path} (checkpoint {self.checkpoint.name})"

    def _probe(self, probe: np.ndarray) -> list[np.ndarray]:
        try:
            return [np.asarray(o) for o in self.session.run(None, {self.input_name: probe})]
        except _onnxruntime_errors() as error:
            raise JudgeLoadError(
                f"{self._where}: fails on a {probe.shape} input ({_first_line(error)}); it is not "
                f"{self.checkpoint.file_name}; {self._what_to_do}"
            ) from None

    def _check_model(self) -> None:
        """The model takes ``(n, 3, S, S)`` at ``S = input_size`` and predicts ``4 + classes`` rows."""
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape)
        where = f"NudeNet model {self.model_path}"
        channels = shape[1] if len(shape) == 4 else None
        if len(inputs) != 1 or len(shape) != 4 or (isinstance(channels, int) and channels != 3):
            raise JudgeLoadError(
                f"{where}: takes inputs {[(i.name, i.shape) for i in inputs]}, not one (n, 3, S, S) image batch; "
                f"it is not a NudeNet 3 detector; {self._what_to_do}"
            )
        fixed = [side for side in shape[2:] if isinstance(side, int)]
        if any(side != self.input_size for side in fixed):
            raise JudgeLoadError(
                f"{where}: expects {shape[2]}x{shape[3]} inputs but input_size is {self.input_size}; "
                f"set input_size={fixed[0]} (`--option judge:nudenet.input_size={fixed[0]}`)"
            )
        probe = np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32)
        try:
            outputs = self.session.run(None, {self.input_name: probe})
        except _onnxruntime_errors() as error:
            raise JudgeLoadError(
                f"{where}: fails on a {self.input_size}x{self.input_size} input ({_first_line(error)}); "
                f"input_size must be the size the model was exported for (320 for 320n.onnx, 640 for 640m.onnx)"
            ) from None
        raw = np.asarray(outputs[0]) if len(outputs) == 1 else None
        if raw is None or raw.ndim != 3 or raw.shape[1] != 4 + len(self.labels):
            raise JudgeLoadError(
                f"{where}: outputs {[np.shape(o) for o in outputs]}, not one (n, 4 + {len(self.labels)} classes, "
                f"anchors) array: it is not a NudeNet 3 detector; {self._what_to_do}"
            )

    def _check_v2_detector(self) -> None:
        """One ``(n, H, W, 3)`` input; int32 labels, float scores ``(n, N)`` and boxes ``(n, N, 4)`` out."""
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or len(shape) != 4 or (isinstance(shape[3], int) and shape[3] != 3):
            raise JudgeLoadError(
                f"{self._where}: takes inputs {[(i.name, i.shape) for i in inputs]}, not one (n, H, W, 3) BGR "
                f"image; it is not the NudeNet 2 detector; {self._what_to_do}"
            )
        outputs = self._probe(np.zeros((1, 128, 128, 3), dtype=np.float32))
        try:
            split_v2_outputs(outputs)
        except ValueError as error:
            raise JudgeLoadError(f"{self._where}: {error}: it is not the NudeNet 2 detector; "
                                 f"{self._what_to_do}") from None

    def _check_classifier(self) -> None:
        """One ``(n, 256, 256, 3)`` input; one ``(n, 2)`` output (unsafe, safe)."""
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape)
        side = self.checkpoint.input_size
        expected = [None, side, side, 3]
        if len(inputs) != 1 or len(shape) != 4 or any(
            isinstance(got, int) and want is not None and got != want
            for got, want in zip(shape, expected, strict=True)
        ):
            raise JudgeLoadError(
                f"{self._where}: takes inputs {[(i.name, i.shape) for i in inputs]}, not one (n, {side}, {side}, 3) "
                f"image batch; it is not the NudeNet 2 classifier; {self._what_to_do}"
            )
        outputs = self._probe(np.zeros((1, side, side, 3), dtype=np.float32))
        if outputs[0].shape != (1, 2):
            raise JudgeLoadError(
                f"{self._where}: outputs {[o.shape for o in outputs]}, not (n, 2) probabilities (unsafe, safe): "
                f"it is not the NudeNet 2 classifier; {self._what_to_do}"
            )

    def _chunks(self, count: int, batch_size: int) -> Iterable[slice]:
        step = min(batch_size, self.max_batch or batch_size)
        return (slice(start, start + step) for start in range(0, count, step))

    def forward(self, blobs: np.ndarray) -> np.ndarray:
        """``(n, 3, S, S)`` inputs -> ``(n, 4 + classes, anchors)`` raw outputs (NudeNet 3 detectors)."""
        (raw,) = self.session.run(None, {self.input_name: np.ascontiguousarray(blobs, dtype=np.float32)})
        if raw.shape[1] != 4 + len(self.labels):
            raise RuntimeError(
                f"{self.model_path.name} predicts {raw.shape[1] - 4} classes, "
                f"nudenet lists {len(self.labels)}"
            )
        return raw

    def detect(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[list[Detection]]:
        """Detections (v3 class names) per image, with the checkpoint's own processing."""
        processing = self.checkpoint.processing
        if processing == "v2-classifier":
            raise TypeError("the NudeNet 2 classifier has no detections; use probabilities()")
        if processing == "v2-retinanet":
            return [self._detect_v2(image) for image in images]  # one image per run: sizes differ
        results: list[list[Detection]] = []
        for chunk in self._chunks(len(images), batch_size):
            results += detect_v3(processing, images[chunk], self.input_size, self.labels, self.forward)
        return results

    def _detect_v2(self, image: Image.Image) -> list[Detection]:
        blob, scale = preprocess_v2_detector(image)
        outputs = self.session.run(None, {self.input_name: blob[None]})
        boxes, scores, labels = split_v2_outputs(outputs)
        return postprocess_v2_detector(boxes[0], scores[0], labels[0], scale)

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[dict[str, float]]:
        """``{"unsafe": p, "safe": q}`` per image (classifier checkpoints only)."""
        if self.checkpoint.kind != "classifier":
            raise TypeError(f"checkpoint {self.checkpoint.name} is a detector; use detect()")
        results: list[dict[str, float]] = []
        for chunk in self._chunks(len(images), batch_size):
            blobs = np.stack([preprocess_v2_classifier(image) for image in images[chunk]])
            (probs,) = self.session.run(None, {self.input_name: blobs})[:1]
            results += [classifier_probabilities(row) for row in probs]
        return results

