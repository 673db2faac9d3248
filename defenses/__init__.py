"""Defenses, one module each; importing this package registers them."""

from defenses import (  # noqa: F401
    checkpoint,
    esd,
    filter,
    keyword_filter,
    negative_prompt,
    none,
    saferedir,
    sld,
    uce,
)
