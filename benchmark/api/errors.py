"""The errors a user can cause and fix, all under one base.

The CLI prints a :class:`UserError` as one line and exits 2; anything else is a bug in the benchmark or a
plugin and keeps its traceback (exit 1). Raise these for bad input only, never to hide a defect.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a name, value, file or environment the user can fix. The message says what to do."""


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message says which key and what is allowed."""


class OptionError(ConfigError):
    """An unknown or badly typed option of a defense, attack or judge; the message names the option, the
    value and what is allowed."""


class UnknownEntryError(UserError, KeyError):
    """A name that no registry entry carries; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


class PathEscapeError(UserError, ValueError):
    """A user-supplied name or a stored path that would lead outside the directory it belongs to."""


class ModelUnavailableError(UserError, RuntimeError):
    """The model's weights cannot be had here; the message says how to provide them."""


class JudgeLoadError(UserError, RuntimeError):
    """A judge's model file is missing, unreadable or of the wrong shape; the message names the file."""


class DataFileError(UserError, ValueError):
    """A data file (prompt file, concept vector, suite, task file) is missing or malformed."""


class RunFailedError(Exception):
    """Some cells of a run failed (an attack raised). Everything else was computed and kept; the records
    and leaderboards mark the failed cells. Not a :class:`UserError`: the CLI prints the failures and exits 3."""

    def __init__(self, failures: list[str], summary: object = None):
        self.failures = failures
        self.summary = summary  # the run's summary (run directory, leaderboard, counters), all written
        super().__init__(f"{len(failures)} cell(s) failed: " + "; ".join(failures))
