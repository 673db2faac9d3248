"""Leaderboards, tables and plots computed from a run's records."""

from pathlib import Path

# The committed reference entries (one JSON per model, task, defense, attack): what `compare` and `ci` hold a
# run to by default.
REFERENCE_ENTRIES = Path(__file__).resolve().parent / "leaderboard"
