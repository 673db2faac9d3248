"""The README's plugin example is real: it loads, its options are listed and validated, and it runs."""

from __future__ import annotations

import re

from conftest import REPO, run_cli


def readme_plugin() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(# my_defense.py\n.*?)```", text, re.S)
    assert block, "the README lost its plugin example"
    return block.group(1)


def test_readme_plugin_example_runs(tmp_path):
    plugin = tmp_path / "my_defense.py"
    plugin.write_text(readme_plugin())
    listed = run_cli("list", "--plugin", str(plugin), "--options", "my-defense")
    assert "scale (float; x > 0 and <= 20) = 7.5" in listed.stdout and "the negative prompt" in listed.stdout
    bad = run_cli("run", "--plugin", str(plugin), "--model", "tiny-random", "--task", "toy", "--defense",
                  "my-defense", "--option", "defense:my-defense.scale=0", "--dry-run", "--out", str(tmp_path),
                  check=False)
    assert bad.returncode == 2 and "scale=0" in bad.stderr and "Traceback" not in bad.stderr
    ran = run_cli("run", "--plugin", str(plugin), "--model", "tiny-random", "--task", "toy", "--defense",
                  "my-defense", "--attack", "none", "--max-prompts", "2", "--max-benign", "1", "--steps", "2",
                  "--out", str(tmp_path / "runs"))
    assert "my-defense" in ran.stdout
