"""The records schema is written once (:class:`benchmark.records.Record`): the column list, the documentation
and the parquet schema are generated from it, and an empty run writes the same schema as a full one."""

from __future__ import annotations

import dataclasses
import io
import math
import typing

import pandas as pd
import pyarrow.parquet as pq
import pytest

import benchmark.records as records_module
from benchmark.records import (
    COLUMNS,
    LEADERBOARD_COLUMNS,
    Record,
    arrow_schema,
    parquet_bytes,
    records_frame,
)
from reports.leaderboard import compute_leaderboard


def make_record(**changes) -> Record:
    """A concept-judge record of an attacked prompt; ``changes`` override fields."""
    values = dict(
        run_id="run-0", model="m", model_key="m-key", task="t", defense="none", defense_key="d-key",
        attack="none", role="attack", prompt_set="t-attack", prompt_id="p0", source_prompt="a prompt",
        adversarial_prompt="a prompt", truncated=False, attack_status="ok", attack_message="",
        attack_seconds=0.0, attack_queries=0, seed=7, image_index=0, guidance_scale=5.0, num_inference_steps=2,
        height=32, width=32, image_path="cells/generate/ab/abc.png", generate_seconds=0.5, blocked=False,
        defense_triggered=None, prepare_seconds=None, retained=None, judge="mini-detector", judge_version="1",
        judge_preset="gore", judge_threshold=0.5, judge_weights_hash="h", judge_role="concept", score=0.9,
        flagged=True, judge_seconds=0.01,
    )
    values.update(changes)
    return Record(**values)


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and pd.isna(value))


def test_columns_are_the_record_fields_in_order():
    assert COLUMNS == [f.name for f in dataclasses.fields(Record)]
    assert len(set(COLUMNS)) == len(COLUMNS)
    assert LEADERBOARD_COLUMNS[-1] == "status"


def test_every_field_is_documented_and_the_docstring_lists_every_column():
    doc = records_module.__doc__
    listed = [line.split()[0] for line in doc.splitlines() if line and not line.startswith((" ", "="))
              and line.split()[0] in COLUMNS]
    assert listed == COLUMNS  # every column, once, in order
    for f in dataclasses.fields(Record):
        text = f.metadata.get("doc", "")
        assert text.strip(), f"{f.name} has no documentation"
        assert " ".join(text.split()[:4]) in " ".join(doc.split()), f.name


def test_optional_types_match_the_nullable_columns():
    hints = typing.get_type_hints(Record)
    optional = {name for name in COLUMNS if type(None) in typing.get_args(hints[name])}
    assert optional == {"adversarial_prompt", "image_path", "generate_seconds", "defense_triggered",
                        "prepare_seconds", "retained", "judge_threshold", "score", "flagged", "judge_seconds"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_record().score = 0.0
    with pytest.raises(TypeError):
        Record(run_id="only one field")  # every column must be given


def test_empty_and_full_runs_write_the_same_parquet_schema():
    full = records_frame([
        make_record(),
        make_record(prompt_id="p1", attack="x", attack_status="error", attack_message="RuntimeError: boom",
                    adversarial_prompt=None, image_path=None, generate_seconds=None, score=None, flagged=None,
                    judge_seconds=None),
        make_record(role="benign", judge="clip-mini", judge_role="utility", judge_threshold=None, flagged=None,
                    score=31.5, retained=True, defense_triggered=False, prepare_seconds=1.5),
    ])
    empty = records_frame([])
    assert list(empty.columns) == list(full.columns) == COLUMNS
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()
    schemas = [pq.read_schema(io.BytesIO(data)) for data in (_parquet(empty), _parquet(full))]
    schemas += [pq.read_schema(io.BytesIO(parquet_bytes(frame))) for frame in (empty, full)]
    expected = arrow_schema()
    assert expected.names == COLUMNS
    for schema in schemas:
        assert schema.remove_metadata().equals(expected.remove_metadata()), schema
    # The written file carries each column's documentation.
    assert schemas[-1].field("attack_status").metadata[b"doc"].decode().startswith('"ok"')


@pytest.mark.parametrize("write", [_parquet, parquet_bytes], ids=["to_parquet", "parquet_bytes"])
def test_records_round_trip_through_parquet(write):
    written = [
        make_record(),
        make_record(prompt_id="p1", attack="x", attack_status="error", attack_message="RuntimeError: boom",
                    adversarial_prompt=None, image_path=None, generate_seconds=None, score=None, flagged=None,
                    judge_seconds=None),
        make_record(prompt_id="p2", attack="x", attack_status="failed", attack_message="no_token_budget",
                    truncated=True, attack_queries=12, attack_seconds=3.25, blocked=True, flagged=False),
    ]
    back = pd.read_parquet(io.BytesIO(write(records_frame(written))))
    assert list(back.columns) == COLUMNS
    for record, row in zip(written, back.to_dict("records"), strict=True):
        for name in COLUMNS:
            expected, got = getattr(record, name), row[name]
            if expected is None:
                assert _missing(got), (name, got)
            elif isinstance(expected, float):
                assert math.isclose(got, expected), (name, got)
            else:
                assert got == expected and not _missing(got), (name, got)


def test_records_frame_checks_mappings_and_reports_read_typed_frames():
    row = dataclasses.asdict(make_record())
    assert records_frame([row]).equals(records_frame([make_record()]))
    with pytest.raises(TypeError):
        records_frame([{k: v for k, v in row.items() if k != "score"}])  # a missing column is an error
    # The report code reads the typed frame (nullable booleans, string dtype) as it reads any run.
    error = {"attack_status": "error", "score": None, "flagged": None, "image_path": None}
    frame = pd.read_parquet(io.BytesIO(parquet_bytes(records_frame(
        [make_record(prompt_id=f"p{i}", flagged=i % 2 == 0) for i in range(4)]
        + [make_record(prompt_id=f"p{i}", attack="x", **error) for i in range(4)]))))
    board = compute_leaderboard(frame)
    asr = board[board["metric"] == "asr"].set_index("attack")
    assert asr.loc["none", "value"] == 0.5 and asr.loc["none", "status"] == "ok"
    assert asr.loc["x", "status"] == "failed" and math.isnan(asr.loc["x", "value"]) and asr.loc["x", "n"] == 4
