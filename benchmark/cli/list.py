"""``list``: registered entries with a one-line description; ``--options NAME``: a component's options."""

from __future__ import annotations

import argparse
import difflib

from benchmark.api.errors import UserError
from benchmark.api.registry import ALL_REGISTRIES, ATTACKS, DEFENSES, JUDGES, REGISTRIES_BY_KIND, load_plugin

HELP = "list registered entries with a one-line description"
COMPONENT_REGISTRIES = {"defense": DEFENSES, "attack": ATTACKS, "judge": JUDGES}


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("list", help=HELP)
    parser.add_argument("kind", nargs="?", choices=sorted(REGISTRIES_BY_KIND), help="only this kind")
    parser.add_argument("--plugin", action="append", default=[], help="also load this plugin file")
    parser.add_argument("--options", metavar="NAME",
                        help="print the options of a defense, attack or judge (type, default, allowed values, help, "
                        "per-model presets); KIND:NAME (e.g. judge:nudenet) when a name is registered under two kinds")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    for plugin in args.plugin:
        load_plugin(plugin)
    if args.options:
        return print_options(args.options)
    registries = [REGISTRIES_BY_KIND[args.kind]] if args.kind else ALL_REGISTRIES
    for registry in registries:
        entries = list(registry.entries())
        print(f"{registry.kind} ({len(entries)}):")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
            print(f"  {entry.name:<{width}}  {entry.description}{origin}")
    return 0


def find_component(target: str) -> tuple[str, str]:
    """``NAME`` or ``KIND:NAME`` -> (kind, name) of one registered defense, attack or judge."""
    kind, sep, name = target.partition(":")
    if sep and kind not in COMPONENT_REGISTRIES:
        raise UserError(f"--options {target}: KIND must be defense, attack or judge")
    if not sep:
        name = target
    candidates = [k for k, r in COMPONENT_REGISTRIES.items() if (not sep or k == kind) and name in r]
    if not candidates:
        registry = COMPONENT_REGISTRIES[kind] if sep else DEFENSES
        every = [n for r in COMPONENT_REGISTRIES.values() for n in r.names()]
        hint = difflib.get_close_matches(name, every, n=3)
        raise UserError(f"--options {target}: no defense, attack or judge of that name"
                        + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else "")
                        + f" (`python -m benchmark list {registry.kind}`)")
    if len(candidates) > 1:
        raise UserError(f"--options {name}: both a {' and a '.join(candidates)}; write {candidates[0]}:{name}")
    return candidates[0], name


def print_options(target: str) -> int:
    """``list --options NAME``: the component's options as a table, then its per-model presets."""
    kind, name = find_component(target)
    registry = COMPONENT_REGISTRIES[kind]
    cls = registry.get(name)
    print(f"{kind} {name}: {registry.entry(name).description}")
    infos = cls.option_infos()
    if not infos:
        print("  (no options)")
    for info in infos:
        allowed = f"; {info.allowed}" if info.allowed else ""
        print(f"  {info.name} ({info.type}{allowed}) = {info.default!r}")
        if info.help:
            print(f"      {info.help}")
    presets = getattr(cls, "presets", None)
    if presets is not None:
        print(f"Presets (fill the options {', '.join(presets.options)} when left unset):")
        for preset, models, values in presets.rows():
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            print(f"  {preset} ({models}): {shown}")
    print(f"Set one with --option {kind}:{name}.KEY=VALUE")
    return 0
