"""Defenses, one module each; importing this package registers them."""

from defenses import negative_prompt, none, saferedir  # noqa: F401
