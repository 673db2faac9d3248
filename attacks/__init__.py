"""Attacks, one module each; importing this package registers them."""

from attacks import none, prompt_set  # noqa: F401
