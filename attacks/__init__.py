"""Attacks, one module each; importing this package registers them."""

from attacks import none, paraphrase, prompt_set, ring_a_bell, unlearndiff  # noqa: F401
