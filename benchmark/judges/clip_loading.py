"""Loading CLIP for the CLIP-based judges (clip-score, clip-zero-shot), offline by default.

Why a shared helper: both judges must follow the same rules and, when they use the same model in one
process, share one copy of it.

* A hub id (``openai/clip-vit-large-patch14``) loads from the local Hugging Face cache only
  (``local_files_only=True``). Downloads happen only when asked for (``allow_download=True`` or
  ``UNLEARN_ARENA_ALLOW_DOWNLOADS=1``) and never when ``HF_HUB_OFFLINE=1``. A missing model fails at judge
  construction, before any image is generated, with a message naming the id and how to pass a folder.
* A local folder (anything written by ``save_pretrained`` or ``huggingface-cli download --local-dir``).
* ``tiny-random``: a tiny CLIP with fixed-seed random weights and a byte-level tokenizer built on the
  spot. It measures nothing; it exists so that tests and CI exercise the judges without weights.
* ``backend="open_clip"``: an ``open_clip`` architecture name plus ``pretrained`` (a local checkpoint file;
  a tag only when downloads are allowed). ``open_clip`` is optional and imported only here.

Every encoder exposes L2-normalised image and text embeddings, CLIP's logit scale, a version string and a
content hash of its weights (for the judge identity stored in each record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from PIL import Image
from pydantic import Field

from benchmark.api.component import CheckContext
from benchmark.api.errors import JudgeLoadError, OptionError
from benchmark.api.files import PathOrHubId
from benchmark.api.judge import Judge

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
TINY_RANDOM = "tiny-random"
ALLOW_DOWNLOADS_ENV = "UNLEARN_ARENA_ALLOW_DOWNLOADS"
CLIP_MAX_TOKENS = 77  # CLIP's text context, also Stable Diffusion's prompt length

_DTYPES = {
    "auto": torch.float32,  # scores must not depend on the device's favourite precision
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


#: the ``dtype`` option's values (``None`` is ``auto``)
ClipDtype = Literal["auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16"]
ClipBackend = Literal["transformers", "open_clip"]


@dataclass
class ClipLoadOptions:
    """Where a CLIP judge's model comes from and how it runs (shared by clip-score and clip-zero-shot)."""

    model: Annotated[PathOrHubId, Field(description=(
        "hub id (read from the local cache), a local save_pretrained folder, or tiny-random (random weights, for "
        "tests)"))] = DEFAULT_CLIP_MODEL
    backend: Annotated[ClipBackend, Field(description="transformers, or open_clip (needs pretrained)")] = "transformers"
    batch_size: Annotated[int, Field(ge=1, description="images per CLIP call (speed and memory only)")] = 32
    dtype: Annotated[ClipDtype | None, Field(description=(
        "CLIP's precision (null: auto, which is float32); other than float32 is recorded in the judge "
        "version"))] = "float32"
    revision: Annotated[str | None, Field(description=(
        "hub revision of the model (recorded in the judge version)"))] = None
    cache_dir: Annotated[str | None, Field(description="Hugging Face cache folder (default: HF_HOME's)")] = None
    allow_download: Annotated[bool | None, Field(description=(
        "may the model be downloaded (null: UNLEARN_ARENA_ALLOW_DOWNLOADS; never with HF_HUB_OFFLINE=1)"))] = None
    pretrained: Annotated[PathOrHubId | None, Field(description=(
        "backend open_clip: a checkpoint file (or an open_clip tag when downloads are allowed)"))] = None


class ClipLoadError(JudgeLoadError):
    """A CLIP model could not be loaded (missing, not cached, corrupt); the message says which and what to do."""


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Downloads need an explicit yes (argument or env var) and no ``HF_HUB_OFFLINE``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ALLOW_DOWNLOADS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = (dtype or "auto").lower()
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[key]


def state_dict_hash(module: torch.nn.Module, length: int = 16) -> str:
    """SHA-256 over the sorted parameter/buffer names, dtypes, shapes and raw bytes (first ``length`` hex).

    Names are part of the hash so that two checkpoints with equal tensors in different slots differ.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def _normalise(features: torch.Tensor) -> torch.Tensor:
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ClipEncoder(ABC):
    """A loaded CLIP: normalised embeddings plus what a judge identity needs."""

    #: human-readable model name used in the version string (hub id, ``local:<folder>``, ``tiny-random``)
    model_name: str
    backend: str
    device: str
    dtype: torch.dtype
    max_length: int

    def __init__(self, model: Any, tokenizer: Any, model_name: str, device: str, dtype: torch.dtype) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.dtype = dtype

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @property
    def logit_scale(self) -> float:
        """CLIP's learned softmax temperature (``exp(logit_scale)``; 100 for OpenAI's models)."""
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    @abstractmethod
    def library_version(self) -> str: ...

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(n, d)`` float32, unit norm."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        """``(n, d)`` float32, unit norm, and for each text whether it was truncated to the context."""

    @cached_property
    def weights_hash(self) -> str:
        return state_dict_hash(self.module)

    @property
    def version(self) -> str:
        version = f"{self.model_name}/{self.library_version}"
        if self.dtype != torch.float32:
            version += f"/{str(self.dtype).removeprefix('torch.')}"
        return version


class HFClipEncoder(ClipEncoder):
    """transformers ``CLIPModel`` with its tokenizer and image processor."""

    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        model_name: str,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(model, tokenizer, model_name, device, dtype)
        self.image_processor = image_processor
        # Truncate as Stable Diffusion's pipeline does: to the text model's context (77 for CLIP).
        context = int(getattr(model.config.text_config, "max_position_embeddings", CLIP_MAX_TOKENS))
        tokenizer_max = int(getattr(tokenizer, "model_max_length", context) or context)
        self.max_length = min(context, tokenizer_max)

    @property
    def library_version(self) -> str:
        import transformers

        return f"transformers-{transformers.__version__}"

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(device=self.device, dtype=self.dtype)
        # text_model/vision_model + projection: the same in transformers 4 and 5 (get_*_features changed type)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return _normalise(self.model.visual_projection(pooled))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        texts = [str(t) for t in texts]
        full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        truncated = [len(ids) > self.max_length for ids in full]
        # Fixed-length padding: every text sees the same shapes alone or in a batch.
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        pooled = self.model.text_model(
            input_ids=encoded["input_ids"].to(self.device),
            attention_mask=encoded["attention_mask"].to(self.device),
        ).pooler_output
        return _normalise(self.model.text_projection(pooled)), truncated


class OpenClipEncoder(ClipEncoder):
    """An ``open_clip`` model with its preprocessing transform and tokenizer."""

    backend = "open_clip"

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, model_name: str, device: str, dtype: torch.dtype
    ) -> None:
        super().__init__(model, tokenizer, model_name, device, dtype)
        self.preprocess = preprocess
        self.max_length = int(getattr(tokenizer, "context_length", CLIP_MAX_TOKENS))

    @property
    def library_version(self) -> str:
        import open_clip

        return f"open_clip-{getattr(open_clip, '__version__', 'unknown')}"

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images])
        return _normalise(self.model.encode_image(batch.to(device=self.device, dtype=self.dtype)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        texts = [str(t) for t in texts]
        encode = getattr(self.tokenizer, "encode", None)  # open_clip truncates silently; count it ourselves
        truncated = [len(encode(t)) + 2 > self.max_length for t in texts] if encode else [False] * len(texts)
        tokens = self.tokenizer(texts).to(self.device)
        return _normalise(self.model.encode_text(tokens)), truncated


# -- tiny-random ------------------------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    """The offline byte-level CLIPTokenizer shared with the tiny-random pipeline."""
    from benchmark.models.byte_tokenizer import byte_level_clip_tokenizer

    return byte_level_clip_tokenizer(CLIP_MAX_TOKENS)


def _image_processor_class() -> Any:
    """The PIL CLIP image processor (transformers 5) needs no torchvision; transformers 4 has only one."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def build_tiny_random(
    seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> HFClipEncoder:
    """Tiny CLIP (2 layers, width 32, 32x32 images) with weights from ``seed``; for tests only.

    The global RNG is left as it was (``fork_rng``), so building a judge never shifts a run's seeds.
    """
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_tokenizer()
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=CLIP_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    image_processor = _image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    name = TINY_RANDOM if seed == 0 else f"{TINY_RANDOM}(seed={seed})"
    return HFClipEncoder(model, tokenizer, image_processor, name, device, dtype)


# -- hub / folder / open_clip -----------------------------------------------------------------------------


def _how_to_provide(model: str, judge: str) -> str:
    return (
        f"Pass a local folder instead, e.g. `--option judge:{judge}.model=/path/to/clip` (or "
        f"judge_options in a suite file); the folder needs config.json, the weights, the tokenizer files and "
        f"preprocessor_config.json, as written by `save_pretrained` or "
        f"`huggingface-cli download {model} --local-dir /path/to/clip` on a machine with network. "
        f"Alternatively fill the Hugging Face cache (HF_HOME) there, or allow downloads with "
        f"`allow_download=true` / {ALLOW_DOWNLOADS_ENV}=1."
    )


def _looks_like_path(model: str) -> bool:
    if model.startswith((".", "/", "~")) or "\\" in model:
        return True
    return os.sep in model.strip("/").replace("/", "", 1)  # a hub id has exactly one '/'


def _safetensors_error() -> type[BaseException]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        return OSError
    return SafetensorError


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def check_clip_folder(folder: Path, judge: str) -> None:
    """The files a ``save_pretrained`` CLIP folder needs are there and readable (JSON parses, safetensors
    headers are whole), else a :class:`ClipLoadError` naming the file. Reads headers only, no weights."""
    fix = (f"restore the file, or write the folder again with `save_pretrained` or `huggingface-cli download "
           f"<hub id> --local-dir {folder}`")
    for required in ("config.json", "preprocessor_config.json"):
        if not (folder / required).is_file():
            raise ClipLoadError(f"CLIP folder {folder} for judge {judge} has no {required}; {fix}")
    weights = [name for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                 "pytorch_model.bin.index.json") if (folder / name).is_file()]
    if not weights:
        raise ClipLoadError(f"CLIP folder {folder} for judge {judge} has no weights (model.safetensors); {fix}")
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ClipLoadError(
                f"CLIP folder {folder} for judge {judge}: {path.name} is not valid JSON ({_first_line(error)}); {fix}"
            ) from None
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (OSError, _safetensors_error()) as error:
            raise ClipLoadError(
                f"CLIP folder {folder} for judge {judge}: {path.name} is corrupt or truncated ({_first_line(error)}; "
                f"a git-lfs pointer instead of the file also reads so); {fix}"
            ) from None


def _load_transformers(
    model: str, device: str, dtype: torch.dtype, revision: str | None, cache_dir: str | None,
    allow_download: bool | None, judge: str,
) -> HFClipEncoder:
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(model).expanduser()
    if folder.is_dir():
        check_clip_folder(folder, judge)
        source, local_only, name = str(folder), True, f"local:{folder.resolve().name}"
    elif _looks_like_path(model):
        raise ClipLoadError(
            f"CLIP folder {model!r} for judge {judge} does not exist. " + _how_to_provide(model, judge)
        )
    else:
        source, local_only, name = model, not downloads_allowed(allow_download), model
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if revision:
        kwargs["revision"] = revision
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    try:
        clip = CLIPModel.from_pretrained(source, **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(source, **kwargs)
        image_processor = _image_processor_class().from_pretrained(source, **kwargs)
    except _safetensors_error() as error:
        where = f"folder {folder}" if folder.is_dir() else "the Hugging Face cache"
        raise ClipLoadError(
            f"Cannot load CLIP model {model!r} for judge {judge}: a weights file in {where} is corrupt or "
            f"truncated ({_first_line(error)}); delete it (`huggingface-cli delete-cache` for the cache) and "
            f"fetch it again. " + _how_to_provide(model, judge)
        ) from error
    except (OSError, ValueError, RuntimeError) as error:
        if folder.is_dir():  # the files are there (check_clip_folder): they do not fit together
            raise ClipLoadError(
                f"Cannot load CLIP folder {folder} for judge {judge} ({_first_line(error)}); the folder needs "
                f"config.json, the weights, the tokenizer files and preprocessor_config.json of one CLIP model. "
                + _how_to_provide(model, judge)
            ) from error
        where = (
            "in the local Hugging Face cache and downloads are disabled (no network access was attempted)"
            if local_only else "locally or on the hub"
        )
        raise ClipLoadError(
            f"Cannot load CLIP model {model!r} for judge {judge}: not found {where}. "
            + _how_to_provide(model, judge)
            + f" Underlying error: {_first_line(error)}"
        ) from error
    if revision and not folder.is_dir():
        name = f"{name}@{revision}"
    return HFClipEncoder(clip, tokenizer, image_processor, name, device, dtype)


def _load_open_clip(
    model: str, pretrained: str | None, device: str, dtype: torch.dtype, cache_dir: str | None,
    allow_download: bool | None, judge: str,
) -> OpenClipEncoder:
    try:
        import open_clip
    except ImportError as error:
        raise ClipLoadError(
            f"backend='open_clip' for judge {judge} needs the optional package open_clip "
            "(`pip install open_clip_torch`, which also needs torchvision); it is not installed. "
            "Use the default backend='transformers' with a transformers CLIP instead."
        ) from error
    if not pretrained:
        raise ClipLoadError(
            f"backend='open_clip' for judge {judge} needs `pretrained`: a local checkpoint file for "
            f"architecture {model!r} (or an open_clip tag such as 'openai' when downloads are allowed)."
        )
    is_file = Path(pretrained).expanduser().is_file()
    if not is_file and not downloads_allowed(allow_download):
        raise ClipLoadError(
            f"open_clip pretrained={pretrained!r} for judge {judge} is not a local file and downloads are "
            f"disabled. Pass a checkpoint path (`--option judge:{judge}.pretrained=/path/to/open_clip.bin`) "
            f"or allow downloads with allow_download=true / {ALLOW_DOWNLOADS_ENV}=1."
        )
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(Path(pretrained).expanduser()) if is_file else pretrained,
            device=device, cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(model)
    except (OSError, RuntimeError, ValueError) as error:
        raise ClipLoadError(
            f"Cannot load open_clip {model!r} with pretrained={pretrained!r}: {error}"
        ) from error
    tag = Path(pretrained).name if is_file else pretrained
    return OpenClipEncoder(clip, preprocess, tokenizer, f"open_clip:{model}/{tag}", device, dtype)


def check_clip_options(model: str, backend: str, pretrained: str | None, judge: str) -> None:
    """Cross-option rules of the CLIP options, as an :class:`OptionError` (nothing is read or loaded)."""
    if model == TINY_RANDOM and backend != "transformers":
        raise OptionError(f"judge '{judge}': option model='tiny-random' exists only for backend='transformers', "
                          f"got backend={backend!r}")
    if backend == "open_clip" and not pretrained:
        raise OptionError(
            f"judge '{judge}': backend='open_clip' needs option pretrained: a local checkpoint file for "
            f"architecture {model!r} (or an open_clip tag such as 'openai' when downloads are allowed)"
        )


def check_clip_source(
    model: str = DEFAULT_CLIP_MODEL,
    backend: str = "transformers",
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_download: bool | None = None,
    pretrained: str | None = None,
    judge: str = "clip",
) -> None:
    """Can :func:`load_clip` find the model here without the network (or may it download)? Raises the
    :class:`ClipLoadError` loading would raise, reading only file metadata (safetensors headers, JSON)."""
    import importlib.util

    check_clip_options(model, backend, pretrained, judge)
    if model == TINY_RANDOM:
        return
    if backend == "open_clip":
        if importlib.util.find_spec("open_clip") is None:
            raise ClipLoadError(
                f"backend='open_clip' for judge {judge} needs the optional package open_clip "
                "(`pip install open_clip_torch`, which also needs torchvision); it is not installed. "
                "Use the default backend='transformers' with a transformers CLIP instead."
            )
        if not Path(str(pretrained)).expanduser().is_file() and not downloads_allowed(allow_download):
            raise ClipLoadError(
                f"open_clip pretrained={pretrained!r} for judge {judge} is not a local file and downloads are "
                f"disabled. Pass a checkpoint path (`--option judge:{judge}.pretrained=/path/to/open_clip.bin`) "
                f"or allow downloads with allow_download=true / {ALLOW_DOWNLOADS_ENV}=1."
            )
        return
    folder = Path(model).expanduser()
    if folder.is_dir():
        check_clip_folder(folder, judge)
        return
    if _looks_like_path(model):
        raise ClipLoadError(
            f"CLIP folder {model!r} for judge {judge} does not exist. " + _how_to_provide(model, judge)
        )
    if downloads_allowed(allow_download):
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError as error:  # huggingface_hub's HFValidationError: not a repo id
        raise ClipLoadError(
            f"CLIP model {model!r} for judge {judge} is neither an existing folder nor a Hugging Face hub id "
            f"({_first_line(error)}). " + _how_to_provide(model, judge)
        ) from None
    if not isinstance(cached, str):
        raise ClipLoadError(
            f"Cannot load CLIP model {model!r} for judge {judge}: not found in the local Hugging Face cache and "
            f"downloads are disabled (no network access was attempted). " + _how_to_provide(model, judge)
        )


_CACHE: dict[tuple[Any, ...], ClipEncoder] = {}


def clear_cache() -> None:
    """Forget the loaded models (tests, or to free memory)."""
    _CACHE.clear()


def load_clip(
    model: str = DEFAULT_CLIP_MODEL,
    backend: str = "transformers",
    device: str | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_download: bool | None = None,
    pretrained: str | None = None,
    seed: int = 0,
    judge: str = "clip",
) -> ClipEncoder:
    """Load (or reuse) a CLIP encoder; see the module docstring for the rules. ``judge`` names the caller
    in error messages."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if backend not in ("transformers", "open_clip"):
        raise ValueError(f"CLIP backend must be 'transformers' or 'open_clip', got {backend!r}")
    if model == TINY_RANDOM:
        if backend != "transformers":
            raise ValueError("model='tiny-random' exists only for backend='transformers'")
        return build_tiny_random(seed=seed, device=device, dtype=torch_dtype)  # cheap; never shared
    key = (backend, model, pretrained, device, torch_dtype, revision, cache_dir)
    if key not in _CACHE:
        if backend == "open_clip":
            encoder: ClipEncoder = _load_open_clip(
                model, pretrained, device, torch_dtype, cache_dir, allow_download, judge
            )
        else:
            encoder = _load_transformers(
                model, device, torch_dtype, revision, cache_dir, allow_download, judge
            )
        _CACHE[key] = encoder
        log.info("loaded CLIP %s (%s) on %s", model, backend, device)
    return _CACHE[key]


class ClipJudge(Judge):
    """What the CLIP judges (clip-score, clip-zero-shot) share: the CLIP options' checks at resolve time and
    the model load. Subclasses declare ``Options`` deriving from :class:`ClipLoadOptions`."""

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> Any:
        validated = super().validate_options(options)
        cls.check_own_options(validated)
        check_clip_options(validated.model, validated.backend, validated.pretrained, cls.name)
        return validated

    @classmethod
    def check_own_options(cls, options: Any) -> None:
        """Cross-option rules of the subclass's own options (before the CLIP ones); none by default."""

    def load_encoder(self) -> ClipEncoder:
        opts = self.options
        return load_clip(
            opts.model, backend=opts.backend, device=self.device, dtype=opts.dtype, revision=opts.revision,
            cache_dir=opts.cache_dir, allow_download=opts.allow_download, pretrained=opts.pretrained,
            judge=self.name,
        )

    def check_inputs(self, ctx: CheckContext) -> None:
        """The model is here (folder with readable files, or in the local cache) or may be downloaded."""
        opts = self.options
        check_clip_source(opts.model, opts.backend, opts.revision, opts.cache_dir, opts.allow_download,
                          opts.pretrained, judge=self.name)
