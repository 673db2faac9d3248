import textwrap

import pytest

from benchmark.registry import DEFENSES, Registry, UnknownEntryError, load_plugin


def test_decorator_registration_and_description():
    registry: Registry = Registry("widgets")

    @registry.register("alpha")
    class Alpha:
        """First line is the description.

        More text."""

    assert registry.get("alpha") is Alpha
    assert registry.entry("alpha").description == "First line is the description."
    assert registry.names() == ["alpha"]
    assert "alpha" in registry and "beta" not in registry


def test_duplicate_builtin_registration_is_an_error():
    registry: Registry = Registry("widgets")
    registry.add("a", object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", object())


def test_lazy_entry_is_not_imported_until_used():
    registry: Registry = Registry("widgets")
    registry.register_lazy("dumps", "json:dumps", "serialise")
    assert registry.entry("dumps").obj is None
    import json

    assert registry.get("dumps") is json.dumps


def test_did_you_mean():
    with pytest.raises(UnknownEntryError) as info:
        DEFENSES.get("negative-promt")
    message = str(info.value)
    assert "Did you mean 'negative-prompt'" in message
    assert "python -m benchmark list defenses" in message


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownEntryError) as info:
        DEFENSES.get("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_plugin_file_registers_its_entries(tmp_path):
    plugin = tmp_path / "my_defense.py"
    plugin.write_text(textwrap.dedent('''
        from benchmark.registry import DEFENSES
        from defenses.base import Defense, DefendedPipeline

        @DEFENSES.register("my-plugin-defense-xyz")
        class Mine(Defense):
            """A user's defense from a single file."""
            def apply(self, model, task, artifact_dir):
                return DefendedPipeline(model, self, task)
    '''))
    load_plugin(plugin)
    entry = DEFENSES.entry("my-plugin-defense-xyz")
    assert entry.source == "plugin my_defense.py"
    assert entry.description == "A user's defense from a single file."


def test_plugin_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Plugin file not found"):
        load_plugin(tmp_path / "missing.py")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"\.py file"):
        load_plugin(tmp_path / "x.txt")


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A distribution that declares ``unlearn_arena.widgets`` entry points is found without importing it."""
    dist = tmp_path / "thirdparty_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[unlearn_arena.widgets]\nthird = thirdparty_mod:Thing\n")
    (tmp_path / "thirdparty_mod.py").write_text("class Thing:\n    '''from a package'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("widgets")
    assert "third" in registry.names()
    assert registry.entry("third").source == "entry-point"
    assert registry.get("third").__doc__ == "from a package"
