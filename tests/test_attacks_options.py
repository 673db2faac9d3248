"""The built-in attacks' options, context checks and declared failures.

* Every bad option value fails when the attack is built (``validate_options``, what the resolver and
  ``--dry-run`` call), with an :class:`OptionError` naming the option, the value and what is allowed.
* Annotating the options changed no cell key: the default configurations hash as they did before.
* Context checks (files the options name, a source to replay) run in ``check_inputs``, before any work.
* An attack returns ``status="failed"`` only with a reason it declares in ``failures``.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.api.attack import Attack
from benchmark.api.component import CheckContext
from benchmark.api.errors import ConfigError, DataFileError, OptionError, UnknownEntryError
from benchmark.api.registry import ATTACKS, TASKS
from benchmark.hashing import stable_hash
from conftest import REPO, TOY

# stable_hash(Cls().config()) of every built-in attack, measured before the options were annotated: the cell
# keys of default configurations must not move (a change here invalidates every cached attack cell).
DEFAULT_CONFIG_HASHES = {
    "none": "ff73448fbf806bba",
    "paraphrase": "a3dcc4de338ce941",
    "prompt-set": "87b10dbd9d194355",
    "ring-a-bell": "887fa2e55d0b7a57",
    "unlearndiff": "1e36e707dc964371",
    "switch-aware": "290da5e640c5fbd7",
    "mma-diffusion": "2db758bb82ac4c52",
    "concept-inversion": "8d899339283d468a",
    "p4d": "5f9e697c41aad2d4",
}

# (attack, option, bad value, what the message must say is allowed)
BAD_VALUES = [
    ("paraphrase", "threshold", 1.5, "x >= 0 and <= 1"),
    ("paraphrase", "threshold", -0.1, "x >= 0 and <= 1"),
    ("paraphrase", "lexicon", "thesaurus", "one of auto, mini, wordnet"),
    ("paraphrase", "candidates", 0, "x >= 1"),
    ("paraphrase", "queries", -1, "x >= 0"),
    ("unlearndiff", "iterations", -1, "x >= 0"),
    ("unlearndiff", "iterations", "abc", "int | None"),
    ("unlearndiff", "lr", -1, "x > 0"),
    ("unlearndiff", "lr", 0, "x > 0"),
    ("unlearndiff", "preset", "bogus", "one of auto, paper, mini"),
    ("unlearndiff", "check_every", 0, "x >= 1"),
    ("unlearndiff", "tokens", 0, "x >= 1"),
    ("unlearndiff", "batch_size", 0, "x >= 1"),
    ("concept-inversion", "steps", -1, "x >= 0"),
    ("concept-inversion", "images", 0, "x >= 1"),
    ("concept-inversion", "lr", 0, "x > 0"),
    ("concept-inversion", "preset", "huge", "one of auto, paper, mini"),
    ("switch-aware", "mode", "soft", "one of penalty, bpda, both"),
    ("switch-aware", "tau", 0, "x > 0"),
    ("switch-aware", "margin", -1, "x >= 0"),
    ("p4d", "variant", "m", "one of n, k"),
    ("p4d", "every_k", 0, "x >= 1"),
    ("p4d", "iterations", -1, "x >= 0"),
    ("p4d", "lr", 0, "x > 0"),
    ("ring-a-bell", "population", 0, "x >= 2"),
    ("ring-a-bell", "population", 1, "x >= 2"),
    ("ring-a-bell", "generations", -1, "x >= 0"),
    ("ring-a-bell", "crossover", 1.5, "x >= 0 and <= 1"),
    ("ring-a-bell", "mutation", -0.5, "x >= 0 and <= 1"),
    ("ring-a-bell", "tokens", 0, "x >= 1"),
    ("ring-a-bell", "preset", "huge", "one of auto, paper, mini"),
    ("ring-a-bell", "prompts_per_pass", 0, "x >= 1"),
    ("mma-diffusion", "steps", 0, "x >= 1"),
    ("mma-diffusion", "topk", 0, "x >= 1"),
    ("mma-diffusion", "candidates", 0, "x >= 1"),
    ("mma-diffusion", "tokens", 0, "x >= 1"),
    ("mma-diffusion", "restarts", 0, "x >= 1"),
    ("mma-diffusion", "embedding", "mean", "one of pooled, sequence"),
    ("mma-diffusion", "preset", "huge", "one of auto, paper, mini"),
]


def test_default_configs_keep_their_cell_keys():
    for name, expected in DEFAULT_CONFIG_HASHES.items():
        assert stable_hash(ATTACKS.get(name)().config()) == expected, name
    builtin = {e.name for e in ATTACKS.entries() if e.source == "builtin" and e.target
               and e.target.startswith("attacks.")}
    assert builtin <= set(DEFAULT_CONFIG_HASHES), f"record the config hash of {builtin - set(DEFAULT_CONFIG_HASHES)}"


@pytest.mark.parametrize("attack,option,value,allowed", BAD_VALUES,
                         ids=[f"{a}.{o}={v}" for a, o, v, _ in BAD_VALUES])
def test_bad_option_values_fail_naming_option_value_and_what_is_allowed(attack, option, value, allowed):
    cls = ATTACKS.get(attack)
    with pytest.raises(OptionError) as error:
        cls.validate_options({option: value})
    message = str(error.value)
    assert f"option {option}={value!r}" in message and allowed in message, message
    with pytest.raises(OptionError):
        cls(**{option: value})


def test_the_issues_values_fail_in_the_resolver_fast_with_nothing_written(tmp_path):
    from benchmark.harness.config import RunConfig
    from benchmark.harness.resolve import resolve

    cases = [("attack", "paraphrase", {"threshold": 1.5}), ("attack", "unlearndiff", {"iterations": -1}),
             ("attack", "ring-a-bell", {"population": 0}), ("defense", "sld", {"preset": "maximum"})]
    for kind, name, options in cases:
        out = tmp_path / name
        config = RunConfig(model="tiny-random", tasks=["toy"], out=str(out),
                           **({"attacks": [name], "attack_options": {name: options}} if kind == "attack" else
                              {"defenses": [name], "defense_options": {name: options}}))
        start = time.perf_counter()
        with pytest.raises(OptionError, match=next(iter(options))):
            resolve(config)
        assert time.perf_counter() - start < 5
        assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_good_values_pass_and_none_means_the_presets_value():
    assert ATTACKS.get("unlearndiff").validate_options({"iterations": "3"}).iterations == 3
    options = ATTACKS.get("ring-a-bell").validate_options({"population": None, "crossover": 1})
    assert options.population is None and options.crossover == 1.0
    assert ATTACKS.get("paraphrase").validate_options({"threshold": 1}).threshold == 1.0


def test_prompt_set_checks_its_source_before_any_work(tmp_path):
    cls = ATTACKS.get("prompt-set")

    def check(**options):
        cls(**options).check_inputs(CheckContext("tiny-random", TOY, data_dir=str(tmp_path)))

    with pytest.raises(ConfigError, match="prompt-set.set=NAME"):
        check()
    with pytest.raises(OptionError, match="set=.*file=.*exclude"):
        cls(set="toy-attack", file="x.csv")
    with pytest.raises(OptionError, match="column"):
        cls(set="toy-attack", column="prompt")
    with pytest.raises(UnknownEntryError, match="toy-attack"):
        check(set="toy-atack")
    with pytest.raises(DataFileError, match="missing.csv"):
        check(file=str(tmp_path / "missing.csv"))
    with pytest.raises(DataFileError, match="nudity"):  # registered, but its file is not in this data dir
        check(set="unlearndiff-nudity")
    check(set="toy-attack")
    prompts = tmp_path / "adv.csv"
    prompts.write_text("case_number,prompt\n0,a chapel\n")
    check(file=str(prompts))


def test_prompt_set_fails_unmatched_prompts_with_its_declared_reason(tmp_path):
    from benchmark.api.prompt import Prompt

    prompts = tmp_path / "adv.csv"
    prompts.write_text("case_number,prompt\n0,a chapel\n")
    attack = ATTACKS.get("prompt-set")(file=str(prompts))
    matched, unmatched = attack.run([Prompt("0", "a church"), Prompt("9", "a church")],
                                    SimpleNamespace(data_dir=None, task=TOY, sampler={"guidance_scale": 5.0, "seed": 0}))
    assert matched.status == "ok" and matched.text == "a chapel"
    assert unmatched.status == "failed" and unmatched.reason == "no-counterpart" and unmatched.reason in attack.failures


def _failure_reasons_by_class(path: Path) -> list[tuple[str, set[str], list[object]]]:
    """(class, declared reasons, the ``reason=`` of every ``AttackOutput(status="failed", ...)`` in it)."""
    out = []
    for cls in [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)]:
        declared: set[str] = set()
        for stmt in cls.body:
            if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "failures" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Dict)):
                declared = {k.value for k in stmt.value.keys if isinstance(k, ast.Constant)}
        reasons = []
        for node in ast.walk(cls):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "AttackOutput":
                keywords = {k.arg: k.value for k in node.keywords}
                status = keywords.get("status")
                if isinstance(status, ast.Constant) and status.value == "failed":
                    reason = keywords.get("reason")
                    reasons.append(reason.value if isinstance(reason, ast.Constant) else reason)
        out.append((cls.name, declared, reasons))
    return out


def test_every_failed_output_of_a_builtin_attack_carries_a_declared_reason():
    seen = 0
    for path in sorted((REPO / "attacks").glob("*.py")):
        for name, declared, reasons in _failure_reasons_by_class(path):
            for reason in reasons:
                assert reason in declared, f"{path.name}:{name} fails a prompt with {reason!r}, declares {declared}"
                seen += 1
    assert seen >= 2  # paraphrase's no-paraphrase, prompt-set's no-counterpart
    for name in DEFAULT_CONFIG_HASHES:
        cls = ATTACKS.get(name)
        assert issubclass(cls, Attack) and all(isinstance(v, str) and v for v in cls.failures.values())


def test_ring_a_bell_missing_vector_is_a_user_error_before_any_work(tmp_path):
    from benchmark.api.errors import UserError

    attack = ATTACKS.get("ring-a-bell")(vector=str(tmp_path / "VanGogh_vector.npy"))
    with pytest.raises(UserError, match="vector"):
        attack.check_inputs(CheckContext("sd-1.4", TASKS.get("van-gogh"), data_dir=str(tmp_path)))
