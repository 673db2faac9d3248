"""A published unlearned model as a defense, ``checkpoint`` (ESD / UCE / RECE UNets, AdvUnlearn text
encoders, or any fine-tuned UNet or text encoder of the base model).

Algorithm::

    state <- load(source)            # folder | .safetensors | pickled state dict (torch.load weights_only)
    component, prefix <- the UNet or text encoder whose keys the state matches best
    require  keys(state) == keys(component)  and equal shapes      # else: list the mismatches
    require  some tensor differs from the base model               # else: not an unlearned model
    replace the differing tensors in the shared pipeline; restore them in close()

Sources: ``path`` (a diffusers model folder such as ``unet/`` or ``text_encoder/``, a pipeline folder with
``subfolder``, a ``.safetensors`` file, or a ``.pt/.pth/.bin/.ckpt`` pickle), or ``hub_id`` with a pinned
``revision`` (a 40-hex commit) taken from the local hub cache only -- nothing is downloaded at run time.
Pickles are opened only with ``torch.load(weights_only=True)``, which refuses any pickle that would run
code. Original-LDM-format checkpoints (``model.diffusion_model.*`` keys) are not converted: convert them
to diffusers first.

``path`` enters the cell keys by the content of the weight files read from it (a ``LocalPath`` option), never
by the path: rewriting the files in place recomputes the cells. The prepare stage also records the content
hash in the artifact directory; ``apply`` refuses a source whose content has changed since (a file rewritten
during a run), so cached images never describe other weights.

Checks before any work: ``path`` and ``hub_id`` exclude each other, a ``hub_id`` needs ``revision`` (a
40-hex commit) and ``component`` is one of auto, unet, text_encoder, when the defense is built; the
source's weight files must be found (the path exists, the snapshot is in the local hub cache, the
subfolder / filename hold a weight file), in :meth:`Checkpoint.check_inputs`. A :class:`CheckpointError` is
a :class:`~benchmark.api.errors.DataFileError`: a one-line message, no traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from benchmark.api.defense import Defense, DefenseKind, PrepareContext
from benchmark.api.errors import DataFileError, OptionError
from benchmark.api.files import LocalPath, check_weights_header, load_weights
from benchmark.api.registry import DEFENSES
from benchmark.hashing import file_hash, stable_hash
from benchmark.store import atomic_write_json
from defenses.weight_edit import COMPONENTS, WeightEditPipeline, artifact_file, tensors_of

log = logging.getLogger(__name__)

RECORD_FILE = "checkpoint.json"
SAFETENSORS = (".safetensors",)
PICKLES = (".pt", ".pth", ".bin", ".ckpt")
# Key prefixes of published files: diffusers components, DDP wrappers, and the text encoders of
# transformers-4 folders (``text_model.*``, as AdvUnlearn's) or of a wrapper holding one
# (``text_encoder.text_model.*``): transformers >= 5 names CLIPTextModel's tensors without ``text_model.``.
PREFIXES = ("", "unet.", "text_encoder.", "module.", "model.", "text_model.", "text_encoder.text_model.")
# Index buffers some exports carry and others do not; they hold no learned weight.
IGNORABLE = re.compile(r"(^|\.)position_ids$")
CORRUPT_HINT = "pass an intact checkpoint (download or convert it again) with --option defense:checkpoint.path=PATH"


class CheckpointError(DataFileError):
    """A checkpoint that cannot be used as a defense; the message lists what is wrong."""


@dataclass
class CheckpointOptions:
    path: Annotated[LocalPath | None, Field(description="local folder or file")] = None
    hub_id: Annotated[str | None, Field(description="or a hub repository, read from the local cache only")] = None
    revision: Annotated[str | None, Field(pattern=r"^[0-9a-f]{40}$", description=(
        "required with hub_id: the 40-hex commit to pin"))] = None
    subfolder: Annotated[str | None, Field(description='inside the folder / hub snapshot, e.g. "unet"')] = None
    filename: Annotated[str | None, Field(description=(
        'inside the folder / hub snapshot, e.g. "diffusers-nudity-ESDu1-UNET.pt"'))] = None
    component: Annotated[Literal["auto", "unet", "text_encoder"], Field(
        description="auto: the one whose keys the checkpoint matches")] = "auto"


# ---------------------------------------------------------------------------------------------- loading
def source_files(options: CheckpointOptions) -> list[Path]:
    """The weight files the options point at."""
    if bool(options.path) == bool(options.hub_id):
        raise CheckpointError("checkpoint: give exactly one of path=... or hub_id=... (with revision=<commit>)")
    if options.hub_id:
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(options.hub_id, revision=options.revision, local_files_only=True))
        except Exception as error:
            raise CheckpointError(
                f"checkpoint: {options.hub_id}@{options.revision} is not in the local hub cache and nothing is "
                f"downloaded at run time ({type(error).__name__}). Download it where the hub is reachable "
                f"(`huggingface-cli download {options.hub_id} --revision {options.revision}`) or pass path=..."
            ) from error
    else:
        root = Path(options.path).expanduser()
        if not root.exists():
            raise CheckpointError(f"checkpoint: no such file or folder: {root}")
    if options.subfolder:
        root = root / options.subfolder
    if options.filename:
        root = root / options.filename
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CheckpointError(f"checkpoint: {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(SAFETENSORS))
    if not files:  # a folder saved without safetensors: its .bin files are pickles, opened safely
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(PICKLES))
    if not files:
        raise CheckpointError(f"checkpoint: {root} holds no .safetensors or {'/'.join(PICKLES)} weight file; "
                              "for a pipeline folder pass subfolder=unet or subfolder=text_encoder")
    return files


def load_state(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.name.endswith(SAFETENSORS):
            part = load_weights(path, "defense 'checkpoint'", CORRUPT_HINT)
        elif path.name.endswith(PICKLES):
            try:
                part = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # UnpicklingError for code-running pickles, among others
                # torch's own message suggests weights_only=False; that is exactly what must not be done.
                raise CheckpointError(
                    f"checkpoint: {path.name} cannot be loaded with torch.load(weights_only=True) "
                    f"({type(error).__name__}): it is not a plain state dict of tensors, and pickles that would "
                    "run code are refused. Convert it to .safetensors where you trust its source."
                ) from error
            if isinstance(part, Mapping) and "state_dict" in part and isinstance(part["state_dict"], Mapping):
                part = part["state_dict"]  # training checkpoints wrap the weights
        else:
            raise CheckpointError(f"checkpoint: {path.name}: unknown weight format (use .safetensors or a "
                                  f"{'/'.join(PICKLES)} state dict)")
        if not isinstance(part, Mapping) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise CheckpointError(f"checkpoint: {path.name} is not a state dict (a mapping of names to tensors)")
        state.update(part)
    if not state:
        raise CheckpointError("checkpoint: the weight files hold no tensors")
    return state


# ---------------------------------------------------------------------------------------------- matching
@dataclass
class Match:
    component: str
    prefix: str
    tensors: dict[str, torch.Tensor]  # state-dict name within the component -> checkpoint tensor
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def report(self) -> str:
        def show(title: str, names: list[str]) -> str:
            head = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            return f"\n  {title} ({len(names)}): {head}" if names else ""

        return (f"it matches the {self.component} best (key prefix {self.prefix!r}) but not exactly:"
                + show("missing from the checkpoint", self.missing)
                + show("not in the model", self.unexpected)
                + show("wrong shape", self.wrong_shape))


def match_state(pipe, state: Mapping[str, torch.Tensor], component: str = "auto") -> Match:
    """The (component, key prefix) whose keys the checkpoint matches best, with every mismatch listed."""
    candidates = []
    for name in (COMPONENTS if component == "auto" else (component,)):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        expected = module.state_dict(keep_vars=True)
        for prefix in PREFIXES:
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            overlap = len(stripped.keys() & expected.keys())
            candidates.append((overlap, -len(prefix), name, prefix, stripped, expected))
    if not candidates:
        raise CheckpointError(f"checkpoint: the pipeline has no component {component!r}")
    overlap, _, name, prefix, stripped, expected = max(candidates, key=lambda c: (c[0], c[1]))
    if overlap == 0:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(f"checkpoint: none of its keys (e.g. {sample}) names a parameter of the UNet or the "
                              "text encoder of this model; is it in diffusers format, for this base model?")
    foreign = [k for k in state if not k.startswith(prefix)]
    unexpected = sorted([k for k in stripped if k not in expected and not IGNORABLE.search(k)] + foreign)
    missing = sorted(k for k in expected if k not in stripped and not IGNORABLE.search(k))
    wrong = sorted(f"{k} {tuple(stripped[k].shape)} vs {tuple(expected[k].shape)}" for k in stripped
                   if k in expected and tuple(stripped[k].shape) != tuple(expected[k].shape))
    tensors = {k: v for k, v in stripped.items() if k in expected}
    return Match(name, prefix, tensors, missing, unexpected, wrong)


def differing(pipe, match: Match) -> dict[str, torch.Tensor]:
    """``{"<component>.<name>": tensor}`` for every checkpoint tensor that differs from the base model,
    compared at the lower of the two precisions (an fp16 copy of the base is not an unlearned model)."""
    base = tensors_of(getattr(pipe, match.component))
    out = {}
    for key, value in match.tensors.items():
        reference = base[key].detach().cpu()
        low = value.dtype if value.element_size() < reference.element_size() else reference.dtype
        if not torch.equal(value.to(low), reference.to(low)):
            out[f"{match.component}.{key}"] = value
    return out


def verified_edit(pipe, options: CheckpointOptions) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load, match and compare; returns (the differing tensors, a description for the records)."""
    files = source_files(options)
    state = load_state(files)
    match = match_state(pipe, state, options.component)
    if not match.ok:
        raise CheckpointError(f"checkpoint: every key must match the base model's; {match.report()}")
    edit = differing(pipe, match)
    if not edit:
        raise CheckpointError(f"checkpoint: all {len(match.tensors)} tensors are identical to the base model's "
                              f"{match.component}: it is not an unlearned checkpoint of this model")
    info = {"component": match.component, "key_prefix": match.prefix, "tensors": len(match.tensors),
            "differing_tensors": len(edit), "files": [p.name for p in files],
            "sha256": {p.name: file_hash(p) for p in files}}
    return edit, info


@DEFENSES.register("checkpoint")
class Checkpoint(Defense):
    """A published unlearned UNet or text encoder (folder, safetensors or safe pickle; path or pinned hub id)."""

    kind = DefenseKind.WEIGHT_EDIT
    Options = CheckpointOptions
    # Needs a path or hub id: `--defense all` should leave it out (as `--attack all` does for such attacks).
    runs_without_options: ClassVar[bool] = False

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if o.path and o.hub_id:
            raise OptionError(f"defense 'checkpoint': options path={o.path!r} and hub_id={o.hub_id!r} exclude each "
                              "other; give one of them")
        if o.hub_id and not o.revision:
            raise OptionError(f"defense 'checkpoint': option hub_id={o.hub_id!r} needs option revision=<the 40-hex "
                              "commit to pin>; nothing is downloaded at run time, so a moving branch is refused")

    def check_inputs(self, ctx) -> None:
        """The weight files are where the options say (a path, or a snapshot in the local hub cache), and a
        ``.safetensors`` file's header reads (a corrupt file fails here, before any work)."""
        for path in source_files(self.options):
            check_weights_header(path, "defense 'checkpoint'", CORRUPT_HINT)

    def file_key(self, option: str) -> str:
        """``path`` enters the keys by the content of the weight files read from it (not the whole folder)."""
        if option != "path":
            return super().file_key(option)
        return stable_hash(sorted((p.name, file_hash(p)) for p in source_files(self.options)))

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        _, info = verified_edit(ctx.model.pipe, self.options)
        atomic_write_json(artifact_file(ctx.artifact_dir, RECORD_FILE), info)
        return info

    def apply(self, model, task, artifact_dir: Path) -> WeightEditPipeline:
        record = artifact_file(artifact_dir, RECORD_FILE)
        if not record.is_file():
            raise FileNotFoundError(f"checkpoint: not verified yet ({record.name} missing); run the prepare stage")
        prepared = json.loads(record.read_text())
        edit, info = verified_edit(model.pipe, self.options)
        if info["sha256"] != prepared["sha256"]:
            raise CheckpointError("checkpoint: its files changed since the prepare stage verified them (content "
                                  "hash differs); cached images would describe other weights. Rerun: the cells "
                                  "are keyed by the files' content, so the new weights get their own")
        return WeightEditPipeline(model, self, task, edit, as_delta=False)

