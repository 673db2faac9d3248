"""Old import paths (before ``benchmark.api``) still work for one release, with a warning naming the new import."""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings

import pytest

from benchmark.api import ATTACKS, DEFENSES, Attack, Defense, DefenseKind
from benchmark.api.deprecated import UnlearnArenaDeprecationWarning
from conftest import run_cli


@pytest.mark.parametrize(("old", "names", "new"), [
    ("benchmark.registry", {"DEFENSES": DEFENSES, "ATTACKS": ATTACKS}, "from benchmark.api import DEFENSES"),
    ("defenses.base", {"Defense": Defense, "DefenseKind": DefenseKind}, "from benchmark.api import Defense"),
    ("attacks.base", {"Attack": Attack}, "from benchmark.api import Attack"),
])
def test_an_old_path_gives_the_same_objects_and_names_the_new_import(old, names, new):
    sys.modules.pop(old, None)  # imported afresh, as a plugin's first import would
    with pytest.warns(UnlearnArenaDeprecationWarning, match=f"'{old}' is deprecated.*{new}"):
        module = importlib.import_module(old)
    for name, obj in names.items():
        assert getattr(module, name) is obj  # the same registry and classes, not copies


def test_the_new_path_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnlearnArenaDeprecationWarning)
        importlib.reload(importlib.import_module("benchmark.api"))


def test_a_plugin_written_for_the_previous_api_runs_and_is_told_the_fix(tmp_path):
    plugin = tmp_path / "old_plugin.py"
    plugin.write_text(textwrap.dedent('''
        from benchmark.registry import DEFENSES
        from defenses.base import DefendedPipeline, Defense, DefenseKind


        @DEFENSES.register("old-style")
        class OldStyle(Defense):
            """A plugin written for the previous API."""

            kind = DefenseKind.INFERENCE_TIME

            def apply(self, model, task, artifact_dir):
                return DefendedPipeline(model, self, task)
    '''))
    result = run_cli("list", "defenses", "--plugin", str(plugin))
    assert "old-style" in result.stdout
    assert f"{plugin}:2: UnlearnArenaDeprecationWarning: 'benchmark.registry' is deprecated" in result.stderr
    assert "write `from benchmark.api import Defense, DefenseKind" in result.stderr
