"""One registration mechanism: decorated classes found by reading their folder, data files, entry points and
plugins; unknown names fail with did-you-mean. (tests/test_architecture.py checks that a new built-in file is
listed without editing another file.)"""

import textwrap

import pytest

from benchmark.api.errors import PathEscapeError, UserError
from benchmark.api.registry import ATTACKS, DEFENSES, TASKS, Registry, UnknownEntryError, load_plugin, scan_code_package
from benchmark.mini_world import TASKS as MINI_TASKS


def test_decorator_registration_and_description():
    registry: Registry = Registry("widgets", "WIDGETS")

    @registry.register("alpha")
    class Alpha:
        """First line is the description.

        More text."""

    assert registry.get("alpha") is Alpha
    assert registry.entry("alpha").description == "First line is the description."
    assert registry.names() == ["alpha"]
    assert "alpha" in registry and "beta" not in registry


def test_duplicate_builtin_registration_is_an_error():
    registry: Registry = Registry("widgets", "WIDGETS")
    registry.add("a", object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", object())


def test_entry_names_must_be_file_safe():
    registry: Registry = Registry("widgets", "WIDGETS")
    for bad in ("../x", "a/b", "", "a b", ".hidden"):
        with pytest.raises(PathEscapeError):
            registry.add(bad, object())


def test_static_scan_finds_builtins_without_importing_them(tmp_path, monkeypatch):
    package = tmp_path / "widgetpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gizmo.py").write_text(textwrap.dedent('''
        raise RuntimeError("importing this module is not allowed while listing")

        @WIDGETS.register("gizmo")
        class Gizmo:
            """A gizmo, described by its docstring."""

        @WIDGETS.register("gadget", description="described in the decorator")
        class Gadget:
            pass

        @OTHER.register("not-ours")
        class NotOurs:
            pass
    '''))
    (package / "_private.py").write_text('@WIDGETS.register("hidden")\nclass Hidden: pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = {e.name: e for e in scan_code_package("widgetpkg", "WIDGETS")}
    assert set(entries) == {"gizmo", "gadget"}
    assert entries["gizmo"].description == "A gizmo, described by its docstring."
    assert entries["gadget"].description == "described in the decorator"
    assert entries["gizmo"].target == "widgetpkg.gizmo:Gizmo" and entries["gizmo"].obj is None


def test_a_broken_builtin_file_is_a_clear_error(tmp_path, monkeypatch):
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def (:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="bad.py"):
        scan_code_package("brokenpkg", "WIDGETS")


def test_one_class_may_carry_two_names():
    assert DEFENSES.get("esd-x") is not DEFENSES.get("esd-u")
    assert DEFENSES.get("esd-x").name == "esd-x" and DEFENSES.get("esd-u").name == "esd-u"


def test_a_registered_subclass_takes_its_own_name_not_its_parents():
    widgets = Registry("widgets", "WIDGETS")

    @widgets.register("parent")
    class Parent:
        pass

    @widgets.register("child")
    class Child(Parent):
        pass

    assert (Parent.name, Child.name) == ("parent", "child")
    assert ATTACKS.get("switch-aware").name == "switch-aware" and ATTACKS.get("p4d").name == "p4d"


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
        from benchmark.api import DEFENSES, Defense, DefendedPipeline

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
    with pytest.raises(UserError, match="Plugin file not found"):
        load_plugin(tmp_path / "missing.py")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UserError, match=r"\.py file"):
        load_plugin(tmp_path / "x.txt")
    (tmp_path / "typo.py").write_text("def f(:\n")
    with pytest.raises(UserError, match="typo.py.*line 1"):
        load_plugin(tmp_path / "typo.py")


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A distribution that declares ``unlearn_arena.widgets`` entry points is found without importing it."""
    dist = tmp_path / "thirdparty_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[unlearn_arena.widgets]\nthird = thirdparty_mod:Thing\n")
    (tmp_path / "thirdparty_mod.py").write_text("class Thing:\n    '''from a package'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("widgets", "WIDGETS")
    assert "third" in registry.names()
    assert registry.entry("third").source == "entry-point"
    assert registry.get("third").__doc__ == "from a package"


def test_task_files_are_data():
    toy = TASKS.get("toy")
    assert toy.name == "toy" and toy.judge.name == "nudenet" and toy.models == ("tiny-random",)
    assert set(TASKS.names()) >= {"nudity", "van-gogh", "church", "toy", "mini-object", "mini-style", "mini-unsafe"}


@pytest.mark.parametrize("name", sorted(MINI_TASKS))
def test_sd_mini_task_files_match_the_world(name):
    """The sd-mini task files mirror the world's task data; they must not drift apart."""
    world, task = MINI_TASKS[name], TASKS.get(name)
    assert task.description == world.description
    assert list(task.concept_words) == list(world.concept_words)
    assert task.judge.name == "mini-detector" and task.judge.options == {"label": world.detector_label}
    assert list(task.retention_concepts) == list(world.retention_concepts)
    assert (task.attack_prompts, task.benign_prompts) == (f"{name}-attack", f"{name}-benign")


def test_a_bad_task_file_names_itself(tmp_path):
    from benchmark.api.errors import ConfigError
    from benchmark.api.task import load_task_file

    bad = tmp_path / "bad-task.yaml"
    bad.write_text("description: x\nconcept_word: [a]\n")
    with pytest.raises(ConfigError, match="bad-task.yaml.*concept_word"):
        load_task_file(bad)
