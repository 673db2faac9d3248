"""Ring-A-Bell's files (Tsai et al., ICLR 2024; github.com/chiayi-hsu/Ring-A-Bell).

Ring-A-Bell finds a *concept vector* (the mean difference between CLIP text embeddings of prompts with and
without a concept) and searches for discrete prompts whose embeddings carry it. Its repository ships three
kinds of file, all read here:

* the inverted prompts it found, ``data/InvPrompt/<Concept>/<Concept>_eta_<eta>_K_<K>.csv``
  (``prompt, case_number, evaluation_seed``), loaded as a prompt set;
* the prompt pairs a concept vector is computed from, ``data/Prompts_For_ConceptVector/*.csv``;
* precomputed concept vectors, ``Concept Vectors/<Concept>_vector.npy`` (one offset per token position).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.api.prompt import Prompt, PromptFileError
from prompts.formats._build import ID_COLUMNS, SEED_COLUMNS, build, check_limit, find_column, is_empty, require_column
from prompts.formats._read import PromptFileNotFoundError, Record, Table, check_file, read_table
from prompts.formats.generic import load_prompt_file

if TYPE_CHECKING:  # numpy is imported lazily by load_concept_vector
    import numpy as np

_INVPROMPT_NAME = re.compile(r"(?P<concept>.+?)_eta_(?P<eta>\d+(?:\.\d+)?)_K_(?P<K>\d+)$")


def load_ring_a_bell(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load a Ring-A-Bell inverted-prompt CSV (``data/InvPrompt/<Concept>/<Concept>_eta_<eta>_K_<K>.csv``:
    ``prompt, case_number, evaluation_seed``). ``meta`` gets ``concept``, ``eta`` and ``K`` parsed from the
    file name when it follows that pattern (K is the prompt length in tokens, eta the concept strength)."""
    check_limit(limit)
    path = Path(path)
    table = read_table(path)
    what = "a Ring-A-Bell prompt file"
    extra: dict[str, Any] = {}
    m = _INVPROMPT_NAME.match(path.stem)
    if m:
        extra = {"concept": m["concept"], "eta": float(m["eta"]), "K": int(m["K"])}
    return build(
        table,
        text_column=require_column(table, "prompt", what),
        id_column=find_column(table.columns, ID_COLUMNS),
        seed_column=find_column(table.columns, SEED_COLUMNS),
        guidance_column=None,
        limit=limit,
        extra_meta=extra,
    )


def _none_cell(value: Any) -> bool:
    return is_empty(value) or str(value).strip() == "None"


def _part(path: Path, rec: Record, column: str) -> str | None:
    """One part of a composed concept prompt: its text, or None for an absent part ('None' or empty)."""
    if column not in rec.values:
        raise PromptFileError(path, rec.line, f"the record lacks the column '{column}'")
    value = rec.values[column]
    if _none_cell(value):
        return None
    if not isinstance(value, str):
        raise PromptFileError(path, rec.line, f"the '{column}' part must be text, got {type(value).__name__}")
    return value.strip()


def load_concept_prompt_pairs(
    path: str | Path, negative_path: str | Path | None = None
) -> list[tuple[Prompt, Prompt]]:
    """Load Ring-A-Bell's prompt pairs for building a concept vector (``data/Prompts_For_ConceptVector``).

    Two layouts exist:

    * ``Violence_30.csv``: ``prompt`` (with the concept), ``prompt1`` (the same sentence without it),
      ``case_number``, ``evaluation_seed``: each row is a pair.
    * ``Nudity_prompt.csv``: the concept prompt in parts (``nudity, people, clothes, location``; ``None``
      marks an absent part), paired by ``case_number`` with ``negative_path`` (default: the sibling file
      ``No<name>``, i.e. ``NoNudity_prompt.csv``), whose ``prompt`` column holds the concept-free prompt.
      The positive text is ``"{nudity} {people}, {location}"`` (``"{nudity}, {location}"`` without people),
      as in Ring-A-Bell's ``Get_Concept_Vector`` notebook; ``clothes`` is kept in ``meta``.

    Returns ``(with_concept, without_concept)`` pairs in file order; a case number missing on either side is
    an error.
    """
    path = Path(path)
    table = read_table(path)
    if find_column(table.columns, ["prompt1"]) and find_column(table.columns, ["prompt"]):
        return _row_pairs(table)
    positives = _composed_positives(path, table)
    negative_path = Path(negative_path) if negative_path is not None else path.with_name("No" + path.name)
    negatives = _paired_negatives(path, negative_path, positives)
    return [(p, negatives[p.id]) for p in positives]


def _row_pairs(table: Table) -> list[tuple[Prompt, Prompt]]:
    """The ``Violence_30.csv`` layout: ``prompt`` and ``prompt1`` of each row, the other's column not in meta."""
    cols = table.columns
    records = list(table.records)
    common: dict[str, Any] = {
        "id_column": find_column(cols, ID_COLUMNS),
        "seed_column": find_column(cols, SEED_COLUMNS),
        "guidance_column": None,
        "limit": None,
    }
    text_col, neg_col = find_column(cols, ["prompt"]), find_column(cols, ["prompt1"])
    with_concept = build(
        Table(table.source, cols, iter(records), table.header_line), text_column=text_col, **common
    )
    without = build(Table(table.source, cols, iter(records), table.header_line), text_column=neg_col, **common)
    drop = {text_col, neg_col}
    return [
        (
            Prompt(p.id, p.text, p.seed, meta={k: v for k, v in p.meta.items() if k not in drop}),
            Prompt(n.id, n.text, n.seed, meta={k: v for k, v in n.meta.items() if k not in drop}),
        )
        for p, n in zip(with_concept, without, strict=True)
    ]


def _composed_positives(path: Path, table: Table) -> list[Prompt]:
    """The ``Nudity_prompt.csv`` layout: each row's concept prompt composed from its parts."""
    cols = table.columns
    what = "a Ring-A-Bell concept-prompt file (expected prompt/prompt1 or nudity/people/location columns)"
    parts = [require_column(table, c, what) for c in ("nudity", "people", "location")]
    id_column = require_column(table, "case_number", what)
    composed: list[Record] = []
    for rec in table.records:
        nudity, people, location = (_part(path, rec, c) for c in parts)
        if nudity is None or location is None:
            raise PromptFileError(path, rec.line, "empty 'nudity' or 'location' part")
        head = nudity if people is None else f"{nudity} {people}"
        values = dict(rec.values)
        values["prompt"] = f"{head}, {location}"
        composed.append(Record(rec.line, values))
    composed_table = Table(table.source, [*cols, "prompt"], iter(composed), table.header_line)
    return build(
        composed_table,
        text_column="prompt",
        id_column=id_column,
        seed_column=find_column(cols, SEED_COLUMNS),
        guidance_column=None,
        limit=None,
    )


def _paired_negatives(path: Path, negative_path: Path, positives: list[Prompt]) -> dict[str, Prompt]:
    """The concept-free prompts by case number; each must pair with exactly one of ``positives``."""
    if not negative_path.exists():
        raise PromptFileNotFoundError(
            f"Concept-free prompts for {path.name} not found at {negative_path}; pass negative_path="
        )
    negatives = {p.id: p for p in load_prompt_file(negative_path)}
    missing = [p.id for p in positives if p.id not in negatives]
    extra = sorted(set(negatives) - {p.id for p in positives})
    if missing or extra:
        raise PromptFileError(
            negative_path,
            None,
            f"does not pair with {path.name}: case numbers missing here {missing[:10]}, "
            f"case numbers only here {extra[:10]}",
        )
    return negatives


def _npy_header(path: Path, fh: Any) -> tuple[tuple[int, ...], bool, Any]:
    """The shape, Fortran order and dtype a .npy header declares, read without touching the data."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)
    except OSError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError or tokenize errors
        raise PromptFileError(path, None, f"malformed .npy header: {' '.join(str(exc).split())}") from None
    raise PromptFileError(path, None, f"unsupported .npy format version {version}; re-save it with numpy.save")


def load_concept_vector(path: str | Path, *, tokens: int = 77, dim: int | None = None) -> np.ndarray:
    """Load a Ring-A-Bell concept vector (``Concept Vectors/<Concept>_vector.npy``) as a float32 array of
    shape ``(tokens, dim)``: one offset per CLIP token position, added to a prompt's text embedding.

    Leading axes of size 1 are dropped (``VanGogh_vector.npy`` is stored as ``(1, 77, 768)``). ``dim``
    defaults to accepting 768 (SD 1.x CLIP ViT-L/14) or 1024 (SD 2.x OpenCLIP ViT-H). Pickled files are
    refused. The header is checked before any data is read, so a file claiming a huge shape costs nothing.
    Raises :class:`PromptFileError` on a file that is not a plain .npy array, a wrong shape or dtype, or
    non-finite values.
    """
    import numpy as np

    path = Path(path)
    check_file(path)
    dims = (dim,) if dim is not None else (768, 1024)
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
            if magic.startswith(b"PK"):
                raise PromptFileError(path, None, "expected a single .npy array, got an archive (.npz)")
            if magic != b"\x93NUMPY":
                raise PromptFileError(
                    path, None, "not a .npy file (no NumPy header; pickled objects are refused); save the vector "
                    "with numpy.save"
                )
            fh.seek(0)
            shape, fortran, dtype = _npy_header(path, fh)
            if dtype.hasobject:
                raise PromptFileError(path, None, "not a plain .npy array (pickled objects are refused)")
            if not np.issubdtype(dtype, np.floating):
                raise PromptFileError(path, None, f"concept vector has dtype {dtype}, expected floats")
            squeezed = tuple(shape)
            while len(squeezed) > 2 and squeezed[0] == 1:
                squeezed = squeezed[1:]
            if len(squeezed) != 2 or squeezed[0] != tokens or squeezed[1] not in dims:
                want = " or ".join(f"({tokens}, {d})" for d in dims)
                raise PromptFileError(path, None, f"concept vector has shape {tuple(shape)}, expected {want}")
            count = int(np.prod(shape, dtype=np.int64))
            data = fh.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise PromptFileError(
                    path, None, f"truncated: the header promises {count * dtype.itemsize} bytes of data, "
                    f"the file holds {len(data)}"
                )
            arr = np.frombuffer(data, dtype=dtype)
            arr = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    except PromptFileError:
        raise
    except (ValueError, OSError, EOFError) as exc:  # a malformed header, an unreadable file
        raise PromptFileError(path, None, f"not a readable .npy array: {' '.join(str(exc).split())}") from None
    arr = arr.reshape(squeezed)
    if not np.isfinite(arr).all():
        raise PromptFileError(path, None, "concept vector contains NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)
