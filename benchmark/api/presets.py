"""Per-model option presets, declared once on a component as data.

A paper's defaults do not suit every model: a 64-pixel sd-mini trains in fewer, larger steps than SD-1.4.
A component says so with one class-level table instead of code that tests the model's name::

    class Esd(Defense):
        presets = Presets({"paper": {"lr": 1e-5, "iterations": 1000},
                           "sd-mini": {"lr": 3e-4, "iterations": 200}},
                          by_model={"sd-mini": "sd-mini"})

        def prepare(self, ctx):
            settings = self.preset_values(ctx.model.name)   # {"lr": ..., "iterations": ...}

An option the user leaves unset (``None``) takes its model's preset value; one the user sets wins. A
component with a ``preset`` option (attacks: ``auto``, ``paper``, ``mini``) may pick a table by name;
``auto`` picks by model. The tables enter the component's cell keys through
:meth:`benchmark.api.component.Component.config`, so that editing a preset recomputes, never reuses a cell.
``python -m benchmark list --options NAME`` prints them per model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmark.api.errors import OptionError

# Models small enough for the CPU, on which attacks use their documented ``mini`` budgets.
SMALL_MODELS = ("sd-mini", "tiny-random")
# The attacks' model -> preset map: the ``mini`` budget on the small models, the paper's elsewhere.
MINI_ON_SMALL_MODELS: Mapping[str, str] = {model: "mini" for model in SMALL_MODELS}


@dataclass(frozen=True)
class Presets:
    """Named tables of option values, and which model uses which.

    ``tables``: preset name -> {option: value}; every table names the same options. ``by_model``: model
    name -> preset name; any other model uses ``default``. ``key`` is the entry of the component's
    ``config()`` that holds the tables; ``key_value``, when given, is what enters it instead of the tables
    (the shape a component shipped with, kept so that its cached cells and shipped artifacts stay valid).
    """

    tables: Mapping[str, Mapping[str, Any]]
    by_model: Mapping[str, str] = field(default_factory=dict)
    default: str = "paper"
    key: str = "defaults"
    key_value: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        names = [set(table) for table in self.tables.values()]
        if self.default not in self.tables:
            raise ValueError(f"Presets: the default preset {self.default!r} is not one of {sorted(self.tables)}")
        if any(n != names[0] for n in names):
            raise ValueError("Presets: every table must name the same options, got "
                             + "; ".join(f"{p}: {sorted(t)}" for p, t in self.tables.items()))
        unknown = sorted(set(self.by_model.values()) - set(self.tables))
        if unknown:
            raise ValueError(f"Presets: by_model names preset(s) {unknown} that have no table")

    @property
    def options(self) -> list[str]:
        """The options the presets set."""
        return list(next(iter(self.tables.values())))

    def name_for(self, model_name: str | None, chosen: str = "auto") -> str:
        """The preset a model uses (``chosen``, when not ``auto``, names it)."""
        if chosen != "auto":
            if chosen not in self.tables:
                raise OptionError(f"option preset={chosen!r}: must be auto or one of {', '.join(self.tables)}")
            return chosen
        return self.by_model.get(model_name or "", self.default)

    def values(self, model_name: str | None, options: Any, chosen: str = "auto") -> dict[str, Any]:
        """The preset's values with every option the user set (not None) on top."""
        values = dict(self.tables[self.name_for(model_name, chosen)])
        for key in values:
            given = getattr(options, key, None)
            if given is not None:
                values[key] = given
        return values

    def key_entry(self) -> dict[str, Any]:
        """What enters the cell keys under :attr:`key`."""
        return dict(self.key_value) if self.key_value is not None else {n: dict(t) for n, t in self.tables.items()}

    def rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(preset, the models that use it, its values), for ``benchmark list --options``."""
        rows = []
        for name, table in self.tables.items():
            models = [m for m, p in self.by_model.items() if p == name]
            if name == self.default:
                models.append("any other model")
            rows.append((name, ", ".join(models) or "by name only (option preset)", dict(table)))
        return rows
