"""The ``checkpoint`` defense on the tiny-random pipeline: an ESD edit exported and loaded back gives the
same images, in every accepted format; and the refusals (mismatched keys, weights identical to the base,
a pickle that would run code, an unpinned or uncached hub id, a file changed after verification).
Random weights: format handling and safety, not unlearning quality."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from benchmark.api.component import CheckContext
from benchmark.api.defense import PrepareContext
from benchmark.api.errors import OptionError, UserError
from benchmark.harness.stages.generate import initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY
from defenses.checkpoint import Checkpoint, CheckpointError
from defenses.esd import DELTA_FILE, EsdX
from defenses.weight_edit import export_unet

KWARGS = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 32, "width": 32}
PROMPTS = ["a church", "a red car"]


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def esd(model, tmp_path_factory):
    """An ESD-x edit: its images, and the edited UNet's full state dict (what a publisher would release)."""
    folder = tmp_path_factory.mktemp("esd")
    defense = EsdX(iterations=3, ddim_steps=3, lr=1e-3)
    defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=folder))
    defended = defense.apply(model, TOY, folder)
    try:
        images = defended.generate(PROMPTS, initial_latents([7, 8], model.pipe, 32, 32), **KWARGS)
        state = {k: v.detach().clone() for k, v in model.pipe.unet.state_dict().items()}
        unet_dir = tmp_path_factory.mktemp("unet_folder")
        model.pipe.unet.save_pretrained(unet_dir)
    finally:
        defended.close()
    exported = tmp_path_factory.mktemp("exported") / "esd-x-unet.safetensors"
    export_unet(model.pipe, folder / DELTA_FILE, exported)  # base + the cached delta, from the artifact
    return images, state, unet_dir, exported


def run_checkpoint(model, tmp_path, **options):
    defense = Checkpoint(**options)
    art = tmp_path / "artifact"
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=art))
    defended = defense.apply(model, TOY, art)
    try:
        images = defended.generate(PROMPTS, initial_latents([7, 8], model.pipe, 32, 32), **KWARGS)
    finally:
        defended.close()
    return images, meta


def pixels(images):
    return np.stack([np.asarray(im) for im in images])


@pytest.mark.parametrize("fmt", ["exported-delta", "safetensors", "pickle", "prefixed-pickle", "folder"])
def test_round_trip_gives_the_same_images(model, esd, tmp_path, fmt):
    images, state, unet_dir, exported = esd
    before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "esd.safetensors"
        save_file(state, str(path))
    elif fmt == "pickle":
        path = tmp_path / "esd-unet.pt"
        torch.save(state, path)
    elif fmt == "prefixed-pickle":  # a training checkpoint: {"state_dict": {"unet.<name>": ...}}
        path = tmp_path / "esd.ckpt"
        torch.save({"state_dict": {f"unet.{k}": v for k, v in state.items()}}, path)
    elif fmt == "folder":
        path = unet_dir
    else:
        path = exported
    ours, meta = run_checkpoint(model, tmp_path, path=str(path))
    assert meta["component"] == "unet" and 0 < meta["differing_tensors"] < meta["tensors"]
    assert np.array_equal(pixels(ours), pixels(images))
    after = model.pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "close() must restore the base UNet"


def test_text_encoder_checkpoint(model, tmp_path):
    state = {k: v.clone() for k, v in model.pipe.text_encoder.state_dict().items()}
    name = next(k for k in state if k.endswith("final_layer_norm.weight"))
    state[name] = state[name] * 0.5
    path = tmp_path / "te.safetensors"
    save_file(state, str(path))
    base = model.pipe.encode_prompt(["a church"], "cpu", 1, False)[0]
    defense = Checkpoint(path=str(path))
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))
    assert meta["component"] == "text_encoder" and meta["differing_tensors"] == 1
    defended = defense.apply(model, TOY, tmp_path / "a")
    try:
        assert not torch.allclose(defended.encode_prompts(["a church"]), base)
    finally:
        defended.close()
    assert torch.equal(model.pipe.encode_prompt(["a church"], "cpu", 1, False)[0], base)


def test_mismatched_keys_are_listed(model, esd, tmp_path):
    _, state, _, _ = esd
    broken = dict(state)
    dropped = sorted(broken)[3]
    broken.pop(dropped)
    broken["down_blocks.9.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(CheckpointError) as error:
        Checkpoint(path=str(path)).prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))
    assert dropped in str(error.value) and "down_blocks.9.extra.weight" in str(error.value)
    assert "missing" in str(error.value) and "not in the model" in str(error.value)


def test_wrong_shapes_are_listed(model, esd, tmp_path):
    _, state, _, _ = esd
    name = next(k for k in state if k.endswith("to_k.weight"))
    path = tmp_path / "shape.safetensors"
    save_file({**state, name: torch.zeros(3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="wrong shape"):
        Checkpoint(path=str(path)).prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))


def test_weights_identical_to_the_base_are_refused(model, tmp_path):
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.pipe.unet.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="identical"):
        Checkpoint(path=str(path)).prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))
    half = tmp_path / "base-fp16.safetensors"  # a lower-precision copy of the base is still the base
    save_file({k: v.half().contiguous() for k, v in model.pipe.unet.state_dict().items()}, str(half))
    with pytest.raises(CheckpointError, match="identical"):
        Checkpoint(path=str(half)).prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "b"))


class _RunsCode:
    """Unpickling this would create a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(model, esd, tmp_path):
    _, state, _, _ = esd
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({**state, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(path=str(path)).prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))
    assert not marker.exists()


def test_hub_ids_need_a_pinned_cached_revision(model, tmp_path):
    ctx = PrepareContext(model=model, task=TOY, artifact_dir=tmp_path)
    with pytest.raises(OptionError, match="revision='main'.*0-9a-f"):
        Checkpoint(hub_id="someone/esd-unet", revision="main")
    with pytest.raises(OptionError, match="revision"):
        Checkpoint(hub_id="someone/esd-unet")
    with pytest.raises(CheckpointError, match="local hub cache"):
        Checkpoint(hub_id="someone/esd-unet", revision="0" * 40).prepare(ctx)
    with pytest.raises(CheckpointError, match="exactly one"):
        Checkpoint().prepare(ctx)


def test_the_source_is_checked_before_any_work(tmp_path):
    """check_inputs (the resolver's dry run) finds a missing path, an uncached hub snapshot, a folder
    without weights, and two sources at once; each a one-line user error."""
    def check(**options):
        Checkpoint(**options).check_inputs(CheckContext("tiny-random", TOY))

    with pytest.raises(CheckpointError, match="no such file or folder") as error:
        check(path=str(tmp_path / "missing.safetensors"))
    assert isinstance(error.value, UserError)
    with pytest.raises(CheckpointError, match="local hub cache"):
        check(hub_id="someone/esd-unet", revision="0" * 40)
    with pytest.raises(CheckpointError, match="no .safetensors"):
        check(path=str(tmp_path))
    with pytest.raises(CheckpointError, match="exactly one"):
        check()
    with pytest.raises(OptionError, match="path.*hub_id"):
        Checkpoint(path="a", hub_id="b", revision="0" * 40)
    with pytest.raises(OptionError, match="component='vae'"):
        Checkpoint(path="a", component="vae")
    (tmp_path / "unet.safetensors").write_bytes(b"")  # a corrupt header fails here too, before any work
    with pytest.raises(UserError, match="unet.safetensors is not a readable .safetensors file"):
        check(path=str(tmp_path))


def test_a_file_changed_after_verification_is_refused(model, esd, tmp_path):
    _, state, _, _ = esd
    path = tmp_path / "esd.safetensors"
    save_file(state, str(path))
    defense = Checkpoint(path=str(path))
    defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path / "a"))
    name = next(k for k in state if k.endswith("to_v.weight"))
    save_file({**state, name: state[name] + 1}, str(path))
    with pytest.raises(CheckpointError, match="changed"):
        defense.apply(model, TOY, tmp_path / "a")
