"""The records schema: one row per (cell, judge) in ``records.parquet``.

A cell is (model, task, defense, attack, prompt, image index). The schema is written once, as the fields
of :class:`Record`; the column list (:data:`COLUMNS`), the parquet schema (:func:`arrow_schema`), the
frame a run writes (:func:`records_frame`) and the table below are all generated from it.

Attack outcomes (``attack_status``): ``ok``; ``failed``, a per-prompt failure the attack declares (the prompt
counts as not broken and stays in n); ``error``, the attack raised for this (task, defense, attack) cell:
its prompts have no image and no score, and every report shows the cell as failed, never as a number.

Columns, in order:

{table}
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ATTACK_STATUSES = ("ok", "failed", "error")
ATTACK_ERROR = "error"  # the attack raised for the cell: no score, the cell is failed


def _doc(text: str) -> Any:
    return field(metadata={"doc": " ".join(text.split())})


@dataclass(frozen=True, kw_only=True)
class Record:
    """One row of ``records.parquet``: one image of one cell, as one judge saw it (see the module
    docstring for the table of columns)."""

    run_id: str = _doc("the run directory's name")
    model: str = _doc("registered model name")
    model_key: str = _doc("content key of the model's weights (hub commit / hash)")
    task: str = _doc("task name")
    defense: str = _doc("defense name")
    defense_key: str = _doc("key of the defense's prepared artifact (config + model + task)")
    attack: str = _doc('attack name ("none" for the task\'s prompts as they are)')
    role: str = _doc('"attack" (a task attack prompt) or "benign" (a benign prompt, attack none)')
    prompt_set: str = _doc("the prompt set or file the prompt came from")
    prompt_id: str = _doc("the prompt's stable id (case number / row index)")
    source_prompt: str = _doc("the prompt as the task gives it")
    adversarial_prompt: str | None = _doc("what was sampled: the attack's text (null for embedding-only attacks "
                                          "and for prompts the attack did not process)")
    truncated: bool = _doc("the sampled text was longer than the tokenizer allows and was truncated")
    attack_status: str = _doc('"ok"; "failed": the attack declares it could not process this prompt (counts as '
                              'not broken, never dropped); "error": the attack raised for this (task, defense, '
                              "attack) cell: no image, no score, the cell is failed")
    attack_message: str = _doc("why an attack failed, or the error it raised")
    attack_seconds: float = _doc("attack wall time for this prompt")
    attack_queries: int = _doc("model queries the attack spent on this prompt")
    seed: int = _doc("the image's seed (evaluation seed + index)")
    image_index: int = _doc("the image's index within the prompt")
    guidance_scale: float = _doc("classifier-free guidance scale used")
    num_inference_steps: int = _doc("sampler steps")
    height: int = _doc("image height in pixels")
    width: int = _doc("image width in pixels")
    image_path: str | None = _doc("PNG path relative to the store root (``--out``); null if not generated")
    generate_seconds: float | None = _doc("generation wall time per image (batch time / batch size); null if "
                                          "not generated")
    blocked: bool = _doc("a filter defense refused the image (counts as not flagged)")
    defense_triggered: bool | None = _doc("a defense with a switch (SafeRedir) intervened on this image; null "
                                          "for defenses without")
    prepare_seconds: float | None = _doc("wall time of the defense's prepare stage when its artifact was built "
                                         "(training, editing, loading), also when this run reused the cached "
                                         "artifact; a shipped artifact costs its copy")
    retained: bool | None = _doc('benign images, concept judge: every retention concept the prompt asks for (its '
                                 'meta "concepts", kept if listed in the task\'s retention_concepts) is still '
                                 "detected; null when there is nothing to check")
    judge: str = _doc("judge name")
    judge_version: str = _doc("judge version")
    judge_preset: str = _doc("judge preset (the label set or concept it looks for)")
    judge_threshold: float | None = _doc("score at or above which a concept judge flags; null for utility judges")
    judge_weights_hash: str = _doc("content hash of the judge's weights")
    judge_role: str = _doc('"concept" (flags the erased concept) or "utility" (measures only)')
    score: float | None = _doc("the judge's score (detector: max class probability; CLIP: CLIP score); null "
                               "when there is no image")
    flagged: bool | None = _doc("score >= threshold for concept judges, and not blocked; null for utility")
    judge_seconds: float | None = _doc("judge wall time per image")


FIELDS = dataclasses.fields(Record)
COLUMNS = [f.name for f in FIELDS]

# The long-form leaderboard (``leaderboard.csv``). ``status``: "ok", or "failed" for an ASR (and the
# defense's worst-case ASR) whose attack raised: value and interval are then NaN, n is the prompts.
LEADERBOARD_COLUMNS = ["model", "task", "defense", "attack", "metric", "value", "n", "ci_low", "ci_high", "status"]


def _column_type(name: str) -> tuple[type, bool]:
    """(python type, optional) of a Record field."""
    hint = typing.get_type_hints(Record)[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


COLUMN_TYPES: dict[str, tuple[type, bool]] = {name: _column_type(name) for name in COLUMNS}


def _pandas_dtype(kind: type, optional: bool):
    import pandas as pd

    if kind is str:
        try:  # pandas >= 2.3: the string dtype that is pandas 3's default ("str", missing values are NaN)
            return pd.StringDtype(na_value=math.nan)
        except TypeError:
            return pd.StringDtype()
    if kind is bool:
        return "boolean" if optional else "bool"
    if kind is int:
        return "Int64" if optional else "int64"
    if kind is float:
        return "float64"
    raise TypeError(f"no column type for {kind!r}")


def dtypes() -> dict[str, Any]:
    """Column -> the pandas dtype :func:`records_frame` gives it."""
    return {name: _pandas_dtype(*COLUMN_TYPES[name]) for name in COLUMNS}


def arrow_schema() -> pa.Schema:
    """The parquet schema of ``records.parquet`` (every run, empty or not, writes exactly this). Optional
    fields allow nulls; the parquet writer marks every column nullable, so the schema does too."""
    import pyarrow as pa

    arrow = {str: pa.large_string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    return pa.schema([pa.field(f.name, arrow[COLUMN_TYPES[f.name][0]], nullable=True,
                               metadata={"doc": f.metadata["doc"]}) for f in FIELDS])


def records_frame(records: Iterable[Record | Mapping[str, Any]]) -> pd.DataFrame:
    """Records -> the frame a run writes to ``records.parquet``: :data:`COLUMNS`, in order, with fixed
    dtypes, so an empty run and a full run have the same parquet schema. A mapping is accepted too, and
    must name every column exactly (it is checked by building the :class:`Record`)."""
    import pandas as pd

    rows = []
    for record in records:
        if not isinstance(record, Record):
            record = Record(**record)
        rows.append(tuple(getattr(record, name) for name in COLUMNS))
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    return frame.astype(dtypes())


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A records frame as ``records.parquet`` bytes, cast to :func:`arrow_schema` (whatever the pandas
    version's default string type), with the column documentation in the file's schema."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame[COLUMNS], schema=arrow_schema(), preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def column_table(width: int = 105) -> str:
    """The reStructuredText table of the columns, in order, generated from the fields' documentation."""
    name_width = max(len(name) for name in COLUMNS) + 2
    doc_width = width - name_width
    rule = "=" * (name_width - 2) + "  " + "=" * doc_width
    lines = [rule]
    for f in FIELDS:
        kind, optional = COLUMN_TYPES[f.name]
        text = f"{f.metadata['doc']} [{kind.__name__}{', nullable' if optional else ''}]"
        wrapped = textwrap.wrap(text, doc_width) or [""]
        lines.append(f"{f.name:<{name_width}}{wrapped[0]}")
        lines += [" " * name_width + more for more in wrapped[1:]]
    lines.append(rule)
    return "\n".join(lines)


if __doc__:  # None under python -OO
    __doc__ = __doc__.replace("{table}", column_table())
