"""Fuzz the prompt loaders: whatever a file holds, a loader returns prompts or raises a one-line UserError.

Generated contents (random text and bytes, CSV with random headers, rows and quoting, JSON / JSONL values,
empty files, wrong columns, non-numeric seeds, corrupt .npy arrays) are written under every suffix and fed to
every loader. Each call either returns a list of :class:`Prompt` (unique ids, non-empty stripped texts,
integer seeds, finite guidance) or raises a :class:`~benchmark.api.errors.UserError` whose message is one
line naming the file; any other exception is a bug in the loader.

The examples are derandomised so that CI is stable; set ``UNLEARN_ARENA_FUZZ_EXAMPLES=N`` to draw N fresh
random examples per test instead.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.api.errors import UserError
from benchmark.api.prompt import Prompt
from prompts import (
    load_coco_captions,
    load_concept_prompt_pairs,
    load_concept_vector,
    load_i2p,
    load_mma_diffusion,
    load_prompt_file,
    load_ring_a_bell,
    load_unlearndiff,
)

_FRESH = int(os.environ.get("UNLEARN_ARENA_FUZZ_EXAMPLES", "0") or 0)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=_FRESH or examples,
        deadline=None,
        derandomize=not _FRESH,
        database=None,  # writes nothing into the working tree
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ---------------------------------------------------------------------------------------------------------
# Loaders, and what counts as a correct outcome
# ---------------------------------------------------------------------------------------------------------
LOADERS = {
    "prompt_file": lambda p, limit: load_prompt_file(p, limit=limit),
    "prompt_file_column": lambda p, limit: load_prompt_file(p, column="adv_prompt", limit=limit),
    "unlearndiff": lambda p, limit: load_unlearndiff(p, limit=limit),
    "i2p": lambda p, limit: load_i2p(p, limit=limit, allow_network=False),
    "i2p_filtered": lambda p, limit: load_i2p(p, categories="sexual", hard=True, min_nudity=10, limit=limit,
                                              allow_network=False),
    "mma_diffusion": lambda p, limit: load_mma_diffusion(p, limit=limit),
    "mma_diffusion_clean": lambda p, limit: load_mma_diffusion(p, text_column="clean_prompt", limit=limit),
    "ring_a_bell": lambda p, limit: load_ring_a_bell(p, limit=limit),
    "coco": lambda p, limit: load_coco_captions(p, limit=limit),
    "concept_pairs": lambda p, limit: load_concept_prompt_pairs(p),
    "concept_vector": lambda p, limit: load_concept_vector(p),
}
SUFFIXES = [".csv", ".tsv", ".json", ".jsonl", ".txt", ".npy", ".xlsx", ""]
LIMITS = [None, None, 0, 1, 3]


def _check_prompts(prompts: object) -> None:
    assert isinstance(prompts, list)
    for p in prompts:
        assert isinstance(p, Prompt)
        assert isinstance(p.id, str) and isinstance(p.text, str)
        assert p.text and p.text == p.text.strip()
        assert p.seed is None or (isinstance(p.seed, int) and not isinstance(p.seed, bool) and p.seed >= 0)
        assert p.guidance is None or (isinstance(p.guidance, float) and math.isfinite(p.guidance))
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids)


def _check_outcome(name: str, path: Path, limit: int | None) -> None:
    try:
        result = LOADERS[name](path, limit)
    except UserError as error:
        message = str(error)
        assert message and len(message.splitlines()) == 1, message
        assert path.name in message, message
        return
    if name == "concept_vector":
        assert isinstance(result, np.ndarray) and result.dtype == np.float32 and result.ndim == 2
        assert np.isfinite(result).all()
    elif name == "concept_pairs":
        assert isinstance(result, list) and all(isinstance(pair, tuple) and len(pair) == 2 for pair in result)
        _check_prompts([a for a, _ in result])
        _check_prompts([b for _, b in result])
    else:
        _check_prompts(result)
        if limit is not None:
            assert len(result) <= limit


_counter = itertools.count()


def _write(folder: Path, stem: str, suffix: str, content: bytes) -> Path:
    path = folder / f"{next(_counter)}-{stem}{suffix}"
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------------------
KNOWN_COLUMNS = [
    "prompt", "case_number", "evaluation_seed", "evaluation_guidance", "categories", "hard", "nudity_percentage",
    "adv_prompt", "target_prompt", "clean_prompt", "sanitized_adv_prompt", "success_against_sanitization_defense",
    "id", "seed", "sd_seed", "guidance", "caption", "text", "prompt1", "nudity", "people", "location", "clothes",
    "Unnamed: 0", "PROMPT", "",
]
ODD_CELLS = [
    "", " ", "None", "nan", "NaN", "inf", "-inf", "-1", "0", "1", "1.0", "4.5", "1e400", "9" * 30, "9" * 5000,
    "True", "false", "sexual", "sexual, hate", "violence", '"', '""', "a,b", "a\tb", "x\ny", "\r\n", "\x00",
    "\ufeff", "\u2028", "caf\u00e9", "1,2,3",
]
column_names = st.one_of(st.sampled_from(KNOWN_COLUMNS), st.text(max_size=8))
cells = st.one_of(
    st.sampled_from(ODD_CELLS),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(str),
)


@st.composite
def csv_contents(draw) -> bytes:
    header = draw(st.lists(column_names, max_size=6))
    width = len(header)
    rows = draw(st.lists(st.lists(cells, min_size=max(0, width - 1), max_size=width + 1), max_size=6))
    delimiter = draw(st.sampled_from([",", "\t", ";"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if draw(st.booleans()):  # properly quoted
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator=newline,
                            quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
        for row in [header, *rows]:
            writer.writerow(row)
        text = out.getvalue()
    else:  # raw, quotes and delimiters where they fall
        text = newline.join(delimiter.join(row) for row in [header, *rows])
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])), errors="surrogatepass")


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), cells,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(column_names, st.one_of(cells, json_scalars, json_values), max_size=6)
json_documents = st.one_of(
    st.lists(st.one_of(records, st.text(max_size=20), json_values), max_size=6),
    st.lists(records, max_size=6),
    st.lists(st.text(max_size=20), max_size=6),
    json_values,
)


@st.composite
def json_contents(draw) -> bytes:
    doc = draw(json_documents)
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # cut short
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8")


@st.composite
def jsonl_contents(draw) -> bytes:
    lines = draw(st.lists(st.one_of(records.map(json.dumps), json_values.map(json.dumps), st.just(""),
                                    st.text(max_size=10)), max_size=6))
    return "\n".join(lines).encode("utf-8")


@st.composite
def npy_contents(draw) -> bytes:
    shape = draw(st.sampled_from([(77, 768), (1, 77, 768), (77, 1024), (1, 1, 77, 768), (10, 768), (768,),
                                  (0,), (77, 0), (3, 77, 768), ()]))
    dtype = draw(st.sampled_from(["<f4", ">f4", "<f2", "<f8", "<i4", "|b1", "<c8", "|O", "<U3"]))
    fortran = draw(st.booleans())
    out = io.BytesIO()
    if dtype == "|O":
        array = np.empty((2,), dtype=object)
    else:
        array = np.zeros(shape, dtype=dtype)
        if array.size and draw(st.booleans()) and array.dtype.kind == "f":
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1.5]))
    np.save(out, np.asfortranarray(array) if fortran else array, allow_pickle=True)
    raw = out.getvalue()
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "header", "zip"]))
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "flip" and raw:
        at = draw(st.integers(0, min(len(raw), 200) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
    elif mutation == "header":
        header = draw(st.sampled_from([
            "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 768), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-77, -768), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (77, 768)",
            "{'descr': 'nonsense', 'fortran_order': False, 'shape': (77, 768), }",
            "{'descr': '<f4', 'shape': (77, 768), }",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (77, 768), }",
            "__import__('os')",
        ]))
        body = header.encode("latin1")
        body += b" " * (-(10 + len(body) + 1) % 64) + b"\n"
        raw = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + raw[128:]
    elif mutation == "zip":
        raw = b"PK\x03\x04" + raw
    return raw


# Nearly valid files of each published layout, so that the fuzz also reaches the code past the header:
# the right columns (one may be missing, one extra), plausible values, and now and then an odd cell.
LAYOUTS = {
    "unlearndiff": ["Unnamed: 0", "case_number", "prompt", "evaluation_seed", "evaluation_guidance", "categories",
                    "hard", "nudity_percentage"],
    "i2p": ["prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage", "sd_seed",
            "sd_guidance_scale", "case_number"],
    "mma": ["target_prompt", "adv_prompt", "sanitized_adv_prompt", "success_against_sanitization_defense",
            "clean_prompt"],
    "ring-a-bell": ["prompt", "case_number", "evaluation_seed"],
    "coco": ["case_number", "source", "prompt", "evaluation_seed"],
    "pairs": ["prompt", "prompt1", "case_number", "evaluation_seed"],
    "nudity-parts": ["nudity", "people", "clothes", "location", "case_number"],
}
words = st.text(alphabet="abcdefghij ,.'", min_size=1, max_size=15)
GOOD_VALUES = {
    "case_number": st.integers(0, 8).map(str),
    "Unnamed: 0": st.integers(0, 8).map(str),
    "evaluation_seed": st.integers(0, 2**32).map(str),
    "sd_seed": st.integers(0, 2**32).map(str),
    "evaluation_guidance": st.sampled_from(["7.5", "7", "6.0"]),
    "sd_guidance_scale": st.sampled_from(["7.5", "7", "6.0"]),
    "categories": st.sampled_from(["sexual", "sexual, hate", "violence", "illegal activity", ""]),
    "hard": st.sampled_from(["0", "1"]),
    "inappropriate_percentage": st.floats(0, 100).map(str),
    "nudity_percentage": st.floats(0, 100).map(str),
    "success_against_sanitization_defense": st.sampled_from(["True", "False"]),
    "people": st.sampled_from(["women", "None", "man"]),
    "source": st.just("coco-30k"),
}


@st.composite
def layout_rows(draw) -> tuple[list[str], list[list[str]]]:
    columns = list(LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))])
    if draw(st.integers(0, 4)) == 0:
        columns.pop(draw(st.integers(0, len(columns) - 1)))
    if draw(st.integers(0, 4)) == 0:
        columns.append(draw(column_names))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = []
        for column in columns:
            odd = draw(st.integers(0, 11)) == 0
            row.append(draw(cells) if odd else draw(GOOD_VALUES.get(column, words)))
        rows.append(row)
    return columns, rows


@st.composite
def layout_contents(draw) -> tuple[str, bytes]:
    """(suffix, content): a layout written as CSV, TSV, JSON objects or JSONL."""
    columns, rows = draw(layout_rows())
    suffix = draw(st.sampled_from([".csv", ".tsv", ".json", ".jsonl"]))
    if suffix in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if suffix == ".csv" else "\t", lineterminator="\n")
        writer.writerows([columns, *rows])
        return suffix, out.getvalue().encode("utf-8")
    objects = [dict(zip(columns, row, strict=True)) for row in rows]
    if suffix == ".json":
        return suffix, json.dumps(objects, indent=1).encode("utf-8")
    return suffix, "\n".join(json.dumps(o) for o in objects).encode("utf-8")


any_contents = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.just(b""),
    csv_contents(),
    json_contents(),
    jsonl_contents(),
)


# ---------------------------------------------------------------------------------------------------------
# The fuzz tests
# ---------------------------------------------------------------------------------------------------------
@_settings(600)
@given(content=any_contents, suffix=st.sampled_from(SUFFIXES), loader=st.sampled_from(sorted(LOADERS)),
       limit=st.sampled_from(LIMITS))
def test_any_content_any_suffix_any_loader(folder, content, suffix, loader, limit):
    _check_outcome(loader, _write(folder, "fuzz", suffix, content), limit)


@_settings(300)
@given(content=csv_contents(), suffix=st.sampled_from([".csv", ".tsv"]),
       loader=st.sampled_from(sorted(set(LOADERS) - {"concept_vector"})), limit=st.sampled_from(LIMITS))
def test_csv_tables(folder, content, suffix, loader, limit):
    _check_outcome(loader, _write(folder, "table", suffix, content), limit)


@_settings(300)
@given(content=st.one_of(json_contents(), jsonl_contents()), suffix=st.sampled_from([".json", ".jsonl"]),
       loader=st.sampled_from(sorted(set(LOADERS) - {"concept_vector"})), limit=st.sampled_from(LIMITS))
def test_json_documents(folder, content, suffix, loader, limit):
    _check_outcome(loader, _write(folder, "doc", suffix, content), limit)


@_settings(400)
@given(layout=layout_contents(), loader=st.sampled_from(sorted(set(LOADERS) - {"concept_vector"})),
       limit=st.sampled_from(LIMITS))
def test_nearly_valid_layouts(folder, layout, loader, limit):
    suffix, content = layout
    _check_outcome(loader, _write(folder, "Layout_eta_5.5_K_77", suffix, content), limit)


@_settings(200)
@given(content=npy_contents())
def test_concept_vector_files(folder, content):
    _check_outcome("concept_vector", _write(folder, "Thing_vector", ".npy", content), None)


@_settings(100)
@given(positive=csv_contents(), negative=csv_contents())
def test_concept_pair_files(folder, positive, negative):
    """The nudity layout pairs a file with its sibling No<name>: fuzz both."""
    path = _write(folder, "Pairs", ".csv", positive)
    path.with_name("No" + path.name).write_bytes(negative)
    _check_outcome("concept_pairs", path, None)


EDGE_CASES = {
    "huge-int.json": b"[" + b"9" * 5000 + b"]",
    "huge-int-object.json": b'[{"prompt": "a", "seed": ' + b"9" * 5000 + b"}]",
    "huge-float-seed.json": b'[{"prompt": "a", "seed": 1e400, "guidance": 1e400}]',
    "big-int-guidance.json": b'[{"prompt": "a", "guidance": ' + b"9" * 400 + b"}]",
    "big-seed.json": b'[{"prompt": "a", "seed": ' + str(2**70).encode() + b"}]",
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "deep.jsonl": b"[" * 100_000 + b"]" * 100_000,
    "surrogate.json": b'["\\ud800"]',
    "surrogate-id.json": b'[{"prompt": "a", "id": "\\udfff"}]',
    "nan.json": b'[{"prompt": "a", "guidance": NaN, "nudity_percentage": NaN, "categories": "sexual"}]',
    "nul.csv": b"prompt,seed\na\x00b,1\n",
    "bom-only.csv": b"\xef\xbb\xbf",
    "huge-field.csv": b"prompt\n" + b"a" * 200_000 + b"\n",
    "nudity-empty.csv": b"prompt,categories,hard,nudity_percentage\na,sexual,1,\n",
    "nudity-text.csv": b"prompt,categories,hard,nudity_percentage\na,sexual,,lots\n",
    "header-newline.csv": b'"pro\nmpt",seed\na,1\n',
    "id-newline.csv": b'id,prompt\n"a\nb",x\n"a\nb",y\n',
    "categories-object.json": b'[{"prompt": "a", "categories": {"x": 1}, "hard": [1], "nudity_percentage": "x"}]',
    "pairs-types.json": b'[{"nudity": 1, "people": [], "location": {}, "case_number": 1}]',
    "pairs-missing.json": b'[{"nudity": "a", "people": "b", "location": "c", "case_number": 1}, {"case_number": 2}]',
    "utf16.txt": "a prompt".encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_edge_cases(folder, name, loader):
    stem, suffix = os.path.splitext(name)
    _check_outcome(loader, _write(folder, stem, suffix, EDGE_CASES[name]), None)


# ---------------------------------------------------------------------------------------------------------
# Corrupt weight files: whatever a .safetensors / .pt file holds, the weight loaders behind file options
# (saferedir checkpoint, checkpoint path, prompt-set embeddings) load it or raise a one-line UserError
# naming the file -- never SafetensorError, UnpicklingError or a traceback.
# ---------------------------------------------------------------------------------------------------------
def _valid_safetensors() -> bytes:
    import tempfile

    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "w.safetensors"
        save_file({"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2)},
                  str(path), metadata={"config": "{}"})
        return path.read_bytes()


_VALID_WEIGHTS = _valid_safetensors()


@st.composite
def weight_bytes(draw) -> bytes:
    """Random bytes, or a valid safetensors file truncated, with bytes flipped, or with another header length."""
    kind = draw(st.sampled_from(["random", "truncate", "flip", "length", "header"]))
    data = bytearray(_VALID_WEIGHTS)
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "length":
        return draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + bytes(data[8:])
    header = draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    return len(header).to_bytes(8, "little") + header + bytes(data[8:])


def _weight_loaders(path: Path):
    from benchmark.api.component import CheckContext
    from benchmark.api.files import check_weights_header, load_weights
    from conftest import TOY
    from defenses.checkpoint import Checkpoint, load_state
    from defenses.saferedir import SafeRedir

    ctx = CheckContext(model="tiny-random", task=TOY)
    return {
        "load_weights": lambda: load_weights(path, "test"),
        "check_weights_header": lambda: check_weights_header(path, "test"),
        "saferedir.check_inputs": lambda: SafeRedir(checkpoint=str(path)).check_inputs(ctx),
        "checkpoint.check_inputs": lambda: Checkpoint(path=str(path)).check_inputs(ctx),
        "checkpoint.load_state": lambda: load_state([path]),
    }


@_settings(60)
@given(content=weight_bytes(), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_corrupt_weight_files(folder, content, suffix):
    path = _write(folder, "weights", suffix, content)
    for name, load in _weight_loaders(path).items():
        try:
            load()
        except UserError as error:
            message = str(error)
            assert "\n" not in message and path.name in message, (name, message)
        except Exception as error:  # noqa: BLE001 - anything else is a loader bug
            raise AssertionError(f"{name} on {content[:40]!r}{suffix}: {type(error).__name__}: {error}") from error
