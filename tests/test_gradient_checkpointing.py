"""Gradient checkpointing (``benchmark.api.memory.gradient_checkpointing``) on tiny-random: it really takes effect
in the installed diffusers and transformers (``torch.utils.checkpoint.checkpoint`` is called, and a block inside a
checkpointed module runs its forward twice under backward: once forward, once in the recompute), the gradients
are those without it, every flag is restored afterwards, and the option that switches it is in no cell key."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from attacks import _text
from benchmark.api.memory import gradient_checkpointing
from benchmark.api.registry import ATTACKS, DEFENSES
from benchmark.hashing import stable_hash
from benchmark.models.tiny_random import TinyRandomModel


@pytest.fixture(scope="module")
def pipe():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32).pipe


def _encoder_layers(encoder):
    return getattr(encoder, "text_model", encoder).encoder.layers


def loss_and_grad(pipe) -> tuple[float, torch.Tensor]:
    """A white-box attack's path: token embeddings (the leaf) -> text encoder -> UNet -> loss; its gradient."""
    table = _text.token_embedding(pipe.text_encoder).weight
    ids = torch.tensor(_text.layout(pipe.tokenizer, _text.content_ids(pipe.tokenizer, "a red church"))[0])
    embeds = table[ids].detach().clone()[None].requires_grad_(True)
    cond = _text.encode_from_token_embeds(pipe.text_encoder, embeds)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = pipe.unet(x, 500, encoder_hidden_states=cond).sample.pow(2).mean()
    loss.backward()
    return float(loss.detach()), embeds.grad.clone()


def forward_counts(pipe, enabled: bool) -> dict[str, int]:
    """How often a resnet inside a UNet block and the attention inside an encoder layer start their forward
    during one forward + backward (a pre-hook: the recompute stops once it has what the backward needs, before
    a module's own post-hooks would run)."""
    counts = {"unet": 0, "encoder": 0}
    # (a resnet after the cross-attention: its input depends on the prompt, so the backward needs its activations)
    watched = {"unet": pipe.unet.mid_block.resnets[-1], "encoder": _encoder_layers(pipe.text_encoder)[0].self_attn}
    handles = [module.register_forward_pre_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, module in watched.items()]
    try:
        with gradient_checkpointing(pipe.unet, pipe.text_encoder, enabled=enabled):
            loss_and_grad(pipe)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_checkpointing_recomputes_in_the_backward_pass_and_is_restored(pipe):
    assert forward_counts(pipe, enabled=False) == {"unet": 1, "encoder": 1}
    assert forward_counts(pipe, enabled=True) == {"unet": 2, "encoder": 2}  # forward + recompute in backward
    # restored: the models are as they were (eval mode, no flag, no function left behind)
    flagged = [m for model in (pipe.unet, pipe.text_encoder) for m in model.modules()
               if isinstance(getattr(m, "gradient_checkpointing", None), bool)]
    assert flagged and not any(m.gradient_checkpointing or m.training for m in flagged)
    assert forward_counts(pipe, enabled=False) == {"unet": 1, "encoder": 1}


def test_torch_checkpoint_is_called_only_inside_the_block_and_gradients_are_unchanged(pipe):
    loss_plain, grad_plain = loss_and_grad(pipe)
    real = torch.utils.checkpoint.checkpoint
    with mock.patch("torch.utils.checkpoint.checkpoint", side_effect=real) as counted:
        with gradient_checkpointing(pipe.unet, pipe.text_encoder) as modules:
            loss_ckpt, grad_ckpt = loss_and_grad(pipe)
        assert modules > 0 and counted.call_count > 0
        calls = counted.call_count
        loss_and_grad(pipe)
        assert counted.call_count == calls  # off again after the block
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    assert torch.allclose(grad_ckpt, grad_plain, rtol=1e-4, atol=1e-7)
    assert grad_plain.abs().sum() > 0


def test_disabled_does_nothing_and_a_model_without_support_is_left_alone(pipe, caplog):
    with mock.patch("torch.utils.checkpoint.checkpoint") as never:
        with gradient_checkpointing(pipe.unet, pipe.text_encoder, enabled=False) as modules:
            loss_and_grad(pipe)
    assert modules == 0 and never.call_count == 0
    linear = torch.nn.Linear(2, 2)
    with gradient_checkpointing(linear, None) as modules:
        assert modules == 0
    assert "no module of Linear supports it" in caplog.text


@pytest.mark.parametrize("kind,name", [("attack", "unlearndiff"), ("attack", "p4d"), ("attack", "switch-aware"),
                                       ("attack", "concept-inversion"), ("defense", "esd-x"), ("defense", "esd-u"),
                                       ("defense", "advunlearn"), ("defense", "saferedir")])
def test_the_option_changes_no_cell_key(kind, name):
    cls = (ATTACKS if kind == "attack" else DEFENSES).get(name)
    on = cls(gradient_checkpointing=True)
    assert on.options.gradient_checkpointing is True
    assert stable_hash(on.config()) == stable_hash(cls().config())
    if kind == "defense":
        assert on.prepare_config() == cls().prepare_config()
    assert cls(seed=1).config() != cls().config()  # a result-changing option still moves the key
