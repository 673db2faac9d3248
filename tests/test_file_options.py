"""Options that name files enter cell keys by content (``benchmark.api.files``), never by path.

Unit tests of the hash cache and of :class:`FilePath` keying; per component, a file rewritten in place
changes that component's key (and nothing else's); one CLI run on tiny-random where each named file is
rewritten in turn and exactly the affected cells are recomputed; corrupt weight files fail in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmark.api import FilePath, LocalPath, PathOrHubId
from benchmark.api.component import CheckContext, Component
from benchmark.api.errors import DataFileError, OptionError, UserError
from benchmark.hashing import file_hash, file_sha256
from conftest import TOY, run_cli


def rewrite(path: Path, content: bytes) -> None:
    """Overwrite in place (same path), as a user replacing a checkpoint does."""
    before = path.stat().st_mtime_ns
    path.write_bytes(content)
    if path.stat().st_mtime_ns == before:  # a coarse clock: make the change visible to the (size, mtime) cache
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


# ------------------------------------------------------------------------------------------- the hash cache
def test_same_size_and_mtime_reuses_the_cached_hash(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    first = file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"b" * 100)  # same size, mtime put back: the cache answers without reading
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == first
    rewrite(path, b"c" * 101)
    assert file_sha256(path) != first
    assert file_hash(path) == file_sha256(path)[:16]


def test_same_content_at_two_paths_same_key_and_no_path_in_it(tmp_path):
    a, b = tmp_path / "a" / "x.csv", tmp_path / "b" / "y.csv"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text("unsafe,safe\nred car,blue car\n")

    from defenses.saferedir import SafeRedir

    key_a, key_b = SafeRedir(pairs_file=str(a)).config(), SafeRedir(pairs_file=str(b)).config()
    assert key_a == key_b
    assert str(tmp_path) not in json.dumps(key_a) and "x.csv" not in json.dumps(key_a)
    rewrite(b, b"unsafe,safe\nred car,green car\n")
    assert SafeRedir(pairs_file=str(b)).config() != key_a


@dataclass
class _Options:
    weights: FilePath | None = None  # a file
    folder: LocalPath | None = None  # a file or folder
    model: PathOrHubId = "org/model"  # a hub id or a local path
    steps: int = 3


class _Toy(Component):
    component_kind = "defense"
    name = "toy-files"
    Options = _Options


def test_file_path_keys_by_content_and_unset_keeps_the_old_key(tmp_path):
    plain = _Toy()
    assert plain.keyed_options() == dataclasses.asdict(plain.options)  # nothing named: keyed as before
    assert plain.config()["options"] == {"weights": None, "folder": None, "model": "org/model", "steps": 3}
    assert _Toy(model="other/model").config()["options"]["model"] == "other/model"  # a hub id as written
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    toy = _Toy(weights=weights)  # a Path is accepted too
    assert isinstance(toy.options.weights, str) and toy.options.weights == str(weights)
    assert toy.config()["options"]["weights"] == file_hash(weights)
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "a.safetensors").write_bytes(b"1")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_bytes(b"ignored")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".cache"))
    assert _Toy(folder=str(folder)).config() == _Toy(folder=str(copy)).config()
    assert _Toy(model=str(folder)).config()["options"]["model"] == _Toy(folder=str(copy)).config()["options"]["folder"]
    rewrite(copy / "unet" / "a.safetensors", b"2")
    assert _Toy(folder=str(folder)).config() != _Toy(folder=str(copy)).config()
    assert "defense:toy-files.folder" in {f["role"] for f in _Toy(folder=str(copy)).named_files()}
    info = {i.name: i for i in _Toy.option_infos()}
    assert info["weights"].type == "file | None" and info["folder"].type == "file or folder | None"


def test_a_missing_file_fails_in_one_line_naming_the_option(tmp_path):
    toy = _Toy(weights=str(tmp_path / "nope.pt"))
    for call in (toy.check_files, toy.config):
        with pytest.raises(OptionError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "option weights=" in message and "no such file" in message
        assert "--option defense:toy-files.weights=PATH" in message
    _Toy(model=str(tmp_path / "not-local")).check_files()  # a hub id need not exist locally
    with pytest.raises(OptionError, match="empty|at least 1"):
        _Toy(weights="")


# ---------------------------------------------------------------------------------- per component, a key
def test_shipped_redirectors_still_match_without_a_file():
    """Keys of components naming no file are unchanged: the shipped SafeRedir artifact still matches."""
    from defenses.saferedir import SHIPPED_DIR, SafeRedir, read_metadata

    meta = read_metadata(SHIPPED_DIR / "mini-unsafe.safetensors")
    assert meta["training"] == SafeRedir().prepare_config()


def _rewrite_changes(make, path: Path, other: bytes, key=lambda c: c.config()) -> None:
    before = key(make())
    rewrite(path, other)
    assert key(make()) != before


def test_each_file_option_keys_by_content(tmp_path):
    from attacks.prompt_set import PromptSetAttack as PromptSet
    from attacks.ring_a_bell import RingABell
    from defenses.advunlearn import AdvUnlearn
    from defenses.saferedir import SafeRedir

    csv = tmp_path / "pairs.csv"
    csv.write_text("unsafe,safe\na church,a house\n")
    _rewrite_changes(lambda: SafeRedir(pairs_file=str(csv)), csv, b"unsafe,safe\na chapel,a house\n",
                     key=lambda d: d.prepare_config())
    ckpt = tmp_path / "r.pt"
    torch.save({"x": torch.zeros(2)}, ckpt)
    _rewrite_changes(lambda: SafeRedir(checkpoint=str(ckpt)), ckpt, b"other bytes")
    retain = tmp_path / "retain.txt"
    retain.write_text("a red car\n")
    _rewrite_changes(lambda: AdvUnlearn(retain_file=str(retain)), retain, b"a blue car\n")
    assert "retain_file_sha256" not in AdvUnlearn(retain_file=str(retain)).config()
    replay = tmp_path / "replay.txt"
    replay.write_text("a church\n")
    _rewrite_changes(lambda: PromptSet(file=str(replay)), replay, b"a chapel\n")
    # Ring-A-Bell: a relative path is under the data directory, and is keyed there.
    data = tmp_path / "data"
    data.mkdir()
    (data / "rab.csv").write_text("prompt,negative\na church,a house\n")
    attack = RingABell(pairs="rab.csv")
    attack.check_files(CheckContext(model="tiny-random", task=TOY, data_dir=str(data)))
    before = attack.config()
    rewrite(data / "rab.csv", b"prompt,negative\na chapel,a house\n")
    assert attack.config() != before
    with pytest.raises(OptionError, match="option pairs="):
        RingABell(pairs="missing.csv").check_files(CheckContext(model="tiny-random", task=TOY, data_dir=str(data)))


def test_checkpoint_and_filter_key_what_they_read(tmp_path):
    from defenses.checkpoint import Checkpoint
    from defenses.filter import Filter

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "unet").mkdir(parents=True)
        save_file({"w": torch.ones(2)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (b / "vae").mkdir()
    (b / "vae" / "other.bin").write_bytes(b"not read")  # not the unet's: not in the key
    key = Checkpoint(path=str(a), subfolder="unet").config()
    assert key == Checkpoint(path=str(b), subfolder="unet").config() and str(a) not in json.dumps(key)
    save_file({"w": torch.zeros(2)}, str(b / "unet" / "diffusion_pytorch_model.safetensors"))
    assert Checkpoint(path=str(b), subfolder="unet").config() != key
    checker = tmp_path / "checker"
    checker.mkdir()
    (checker / "config.json").write_text("{}")
    key = Filter(checker=str(checker)).config()
    assert str(checker) not in json.dumps(key)
    rewrite(checker / "config.json", b'{"a": 1}')
    assert Filter(checker=str(checker)).config() != key
    assert Filter().config()["options"]["checker"] == "CompVis/stable-diffusion-safety-checker"


def test_nudenet_model_path_identity_is_the_files_content(tmp_path):
    from benchmark.judges.nudenet_judge import NudeNetJudge

    wheel = NudeNetJudge().detector.model_path
    copy = tmp_path / "320n.onnx"
    shutil.copyfile(wheel, copy)
    assert NudeNetJudge(model_path=str(copy)).identity() == NudeNetJudge().identity()
    rewrite(copy, Path(wheel).read_bytes() + b"\x32\x05other")  # + an ONNX doc_string: a valid, other file
    assert NudeNetJudge(model_path=str(copy)).identity().weights_hash != NudeNetJudge().identity().weights_hash
    with pytest.raises(UserError, match="model_path"):
        NudeNetJudge.check_options({"model_path": str(tmp_path / "nope.onnx")},
                                   CheckContext(model="tiny-random", task=TOY))


# ------------------------------------------------------------------------------------------- corrupt files
CORRUPT = {
    "header too large": b"\xff" * 8 + b"{}",
    "truncated": None,  # a valid file cut in half (built in the test)
    "text": b"this is not a weight file\n",
    "empty": b"",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_safetensors_fail_in_one_line(tmp_path, kind):
    from defenses.checkpoint import Checkpoint
    from defenses.saferedir import SafeRedir
    from defenses.saferedir_io import load_official_checkpoint

    path = tmp_path / "bad.safetensors"
    if CORRUPT[kind] is None:
        save_file({"w": torch.ones(64)}, str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(CORRUPT[kind])
    ctx = CheckContext(model="tiny-random", task=TOY)
    for check in (lambda: SafeRedir(checkpoint=str(path)).check_inputs(ctx),
                  lambda: load_official_checkpoint(path, None),
                  lambda: Checkpoint(path=str(path)).check_inputs(ctx)):
        with pytest.raises(DataFileError) as info:
            check()
        assert "\n" not in str(info.value) and str(path) in str(info.value), str(info.value)
        assert "pass an intact" in str(info.value)


def test_cli_corrupt_checkpoint_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "F.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    result = run_cli("run", "--model", "tiny-random", "--task", "toy", "--defense", "saferedir", "--attack", "none",
                     "--max-prompts", "1", "--max-benign", "0", "--steps", "2",
                     "--option", f"defense:saferedir.checkpoint={bad}", "--out", str(tmp_path / "runs"), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "not a readable .safetensors file" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "F.safetensors" in line]) == 1


# ----------------------------------------------------------------------- rewrite in place, rerun, recompute
def counts(stdout: str) -> dict[str, tuple[int, int]]:
    return {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"(\w+): (\d+) computed, (\d+) cached", stdout)}


@pytest.mark.slow  # seven CLI runs (~1 min): CI's slow tier runs it (benchmarks/ci_budget.py)
def test_rewriting_a_named_file_recomputes_exactly_its_cells(tmp_path):
    from benchmark.models.tiny_random import TinyRandomModel
    from defenses.saferedir import official_config_for
    from defenses.saferedir_net import Redirector, to_official_state_dict

    model = TinyRandomModel().load(torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    redirector = tmp_path / "redirector.pt"
    torch.save(to_official_state_dict(Redirector(official_config_for(model))), redirector)
    unet = {k: v.detach().clone() for k, v in model.pipe.unet.state_dict().items()}
    name = next(k for k in unet if k.endswith("to_k.weight"))
    unet[name] += 0.5
    ckpt = tmp_path / "unet.safetensors"
    save_file(unet, str(ckpt))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a painting of a church\nan old stone church\na red car\n")
    replay = tmp_path / "replay.txt"
    replay.write_text("a chapel at night\na stone chapel\na red truck\n")
    onnx = tmp_path / "detector.onnx"
    from benchmark.judges.nudenet_judge import NudeNetJudge

    wheel = Path(NudeNetJudge().detector.model_path).read_bytes()
    onnx.write_bytes(wheel)
    command = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,saferedir,checkpoint",
               "--attack", "none,prompt-set", "--prompts", str(prompts), "--max-benign", "0", "--steps", "2",
               "--batch-size", "6", "--out", str(tmp_path / "runs"),
               "--option", f"defense:saferedir.checkpoint={redirector}",
               "--option", f"defense:checkpoint.path={ckpt}",
               "--option", f"attack:prompt-set.file={replay}",
               "--option", f"judge:nudenet.model_path={onnx}"]
    first = run_cli(*command)
    images = counts(first.stdout)["generate"][0]
    assert images == 3 * 2 * 3  # 3 defenses x 2 attacks x 3 prompts, all distinct
    judges = counts(first.stdout)["judge"][0] // images  # per image: the task's judge and its utility judge
    run_dir = Path(first.stdout.strip().splitlines()[-1])
    roles = {f["role"]: f for f in json.loads((run_dir / "provenance.json").read_text())["files"]}
    assert {"defense:saferedir.checkpoint", "defense:checkpoint.path", "attack:prompt-set.file",
            "judge:nudenet.model_path", "--prompts"} <= set(roles)
    assert roles["defense:checkpoint.path"]["sha256"] == file_sha256(ckpt)
    assert counts(run_cli(*command).stdout)["generate"] == (0, images)  # nothing changed: all cached

    # SafeRedir's redirector rewritten: its 6 images (2 attacks x 3 prompts), nothing else.
    torch.manual_seed(1)
    torch.save(to_official_state_dict(Redirector(official_config_for(model))), redirector)
    c = counts(run_cli(*command).stdout)
    assert c["prepare"][0] == 1 and c["generate"] == (6, images - 6) and c["judge"][0] == 6 * judges, c
    # The checkpoint's weights rewritten: its 6 images.
    unet[name] -= 1.0
    save_file(unet, str(ckpt))
    c = counts(run_cli(*command).stdout)
    assert c["prepare"][0] == 1 and c["generate"] == (6, images - 6), c
    # One replayed prompt rewritten: its image under each of the 3 defenses.
    rewrite(replay, b"a chapel at night\na stone chapel\na blue bicycle\n")
    c = counts(run_cli(*command).stdout)
    assert c["prepare"][0] == 0 and c["generate"] == (3, images - 3), c
    # One prompt of the run's --prompts file rewritten: its attack-none image under each defense.
    rewrite(prompts, b"a painting of a church\nan old stone church\na green bus\n")
    c = counts(run_cli(*command).stdout)
    assert c["generate"] == (3, images - 3), c
    # The judge's ONNX rewritten (another valid file): every image re-judged, none regenerated.
    rewrite(onnx, wheel + b"\x32\x05other")
    c = counts(run_cli(*command).stdout)
    assert c["generate"] == (0, images) and c["prepare"][0] == 0 and c["judge"] == (images, images * (judges - 1)), c
