"""What defenses and attacks share: typed options, a stable config for cell keys, a clear error on a
misspelt option."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar


class OptionError(ValueError):
    """An unknown or badly typed option of a defense, attack or judge."""


@dataclass
class NoOptions:
    """A component without options."""


class Component:
    """Base of defenses and attacks.

    Subclasses declare their options as a nested ``Options`` dataclass; ``version`` is bumped when the
    algorithm changes so that old cached artifacts are not reused.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Options: ClassVar[type] = NoOptions

    def __init__(self, **options: Any):
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = [key for key in options if key not in fields]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise OptionError(
                f"{type(self).__name__} '{self.name}' has no option {', '.join(hints)}; "
                f"its options are: {sorted(fields) or 'none'}"
            )
        self.options = self.Options(**options)

    def config(self) -> dict[str, Any]:
        """The resolved options and version: what enters this component's cell keys."""
        return {"name": self.name, "version": self.version, "options": dataclasses.asdict(self.options)}
