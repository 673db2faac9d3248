"""SafeRedir's files and network sizes, shared by the defense (:mod:`defenses.saferedir`) and its training
(:mod:`defenses.saferedir_train`): where the shipped redirectors live, the redirector's safetensors format
(fp16 weights, the network config and provenance in the metadata), official-format checkpoints, and the
network size for a model. Neither module imports the other through here: the defense imports the training,
the training imports only this module and the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmark.api.errors import DataFileError
from benchmark.api.files import check_weights_header, load_weights
from defenses.saferedir_net import CheckpointMismatchError, Redirector, RedirectorConfig, load_official_state_dict

SHIPPED_DIR = Path(__file__).resolve().parent / "saferedir_weights"
ARTIFACT = "redirector.safetensors"


def model_sizes(model) -> dict[str, int]:
    """The redirector's input sizes for a loaded model: latent channels, prompt length and width."""
    pipe = model.pipe
    return dict(latent_channels=pipe.unet.config.in_channels, seq_len=pipe.tokenizer.model_max_length,
                prompt_dim=pipe.text_encoder.config.hidden_size)


def network_config(model, network: str) -> RedirectorConfig:
    """The redirector for ``model`` at size ``network``: ``small``, ``official`` (the release's sizes), or
    ``auto`` (small on sd-mini, official otherwise)."""
    if network == "auto":
        network = "small" if model.name == "sd-mini" else "official"
    if network == "small":
        return RedirectorConfig.small(**model_sizes(model))
    return RedirectorConfig(**model_sizes(model))


def official_config_for(model) -> RedirectorConfig:
    return RedirectorConfig(**model_sizes(model))


def save_redirector(path: Path, redirector: Redirector, **metadata: Any) -> None:
    """Weights in fp16 (halves the shipped size; trained and shipped redirectors behave the same because
    both are rounded) with the network config and provenance in the safetensors metadata."""
    from safetensors.torch import save_file

    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
               for k, v in redirector.state_dict().items()}
    meta = {"config": json.dumps(redirector.cfg.to_dict())}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    if "training" in meta:
        meta["training"] = json.loads(meta["training"])
    return meta


CORRUPT_HINT = ("pass an intact official-format redirector (.safetensors/.pt) with "
                "--option defense:saferedir.checkpoint=PATH")


def load_redirector(path: Path) -> Redirector:
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = Redirector(RedirectorConfig.from_dict(json.loads(meta["config"])))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_official_checkpoint(path: Path, cfg: RedirectorConfig) -> Redirector:
    """An official-format redirector state dict: safetensors, or a pickle read with ``weights_only=True``
    (a pickle that needs code to load is refused). Every key must map (see ``OFFICIAL_KEY_MAP``)."""
    if not path.is_file():
        raise DataFileError(f"saferedir: checkpoint {path} does not exist; pass an existing file with "
                            "--option defense:saferedir.checkpoint=PATH")
    if path.suffix == ".safetensors":
        state = load_weights(path, "defense 'saferedir': option checkpoint", CORRUPT_HINT)
        own = own_format_config(path)
        if own is not None:  # a redirector this project saved (trained or shipped): its own names and sizes
            model = Redirector(own)
            try:
                model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            except RuntimeError as error:
                raise CheckpointMismatchError(f"defense 'saferedir': checkpoint {path} does not match the "
                                              f"redirector its metadata describes ({str(error).splitlines()[0]}); "
                                              "pass an intact redirector file") from None
            return model.eval()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - re-raised with what to do
            raise DataFileError(f"saferedir: checkpoint {path} could not be loaded with torch.load(weights_only=True) "
                                f"({type(error).__name__}); only plain state dicts are accepted, never pickled "
                                "code") from error
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    model = Redirector(cfg)
    try:
        load_official_state_dict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"defense 'saferedir': checkpoint {path}: {error}; pass an official-format "
                                      "SafeRedir redirector for this model (option network names its size) or a "
                                      "redirector this project saved") from None
    return model.eval()


def own_format_config(path: Path) -> RedirectorConfig | None:
    """The network config of a ``.safetensors`` redirector this project saved (:func:`save_redirector` puts
    it in the metadata), else None (an official-format file)."""
    if path.suffix != ".safetensors":
        return None
    check_weights_header(path, "defense 'saferedir': option checkpoint", CORRUPT_HINT)
    try:
        meta = read_metadata(path)
        return RedirectorConfig.from_dict(json.loads(meta["config"])) if "config" in meta else None
    except Exception as error:  # noqa: BLE001 - a corrupt header or metadata: the file, not our code
        raise DataFileError(f"defense 'saferedir': checkpoint {path}: unreadable redirector metadata "
                            f"({type(error).__name__}); pass an intact redirector file") from None


def checkpoint_threshold(path: Path) -> float | None:
    """The calibrated threshold a redirector this project saved carries (official files carry none)."""
    if own_format_config(path) is None:
        return None
    value = read_metadata(path).get("threshold")
    return float(value) if value is not None else None
