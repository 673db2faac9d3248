"""Synonyms from the WordNet database files that Debian's ``wordnet-base`` package installs
(``/usr/share/wordnet``; ``WNSEARCHDIR`` overrides, as for WordNet's own tools). The files are read
directly (the documented ``wndb(5)`` format), so nothing is downloaded and no nltk corpus is needed.

``index.<pos>`` lines: ``lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset...``, senses
in frequency order. ``data.<pos>`` lines, found by byte offset: ``offset lex_filenum ss_type w_cnt(hex)
word lex_id ...``. ``<pos>.exc`` maps irregular inflections to base forms.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
DEFAULT_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")


class WordNetUnavailableError(RuntimeError):
    """WordNet's database files are not installed; the message says how to install them."""


def find_dict_dir() -> Path | None:
    candidates = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else []
    for folder in [*candidates, *DEFAULT_DIRS]:
        if Path(folder, "index.noun").is_file() and Path(folder, "data.noun").is_file():
            return Path(folder)
    return None


def available() -> bool:
    return find_dict_dir() is not None


class WordNet:
    """Read-only access to synonyms (lemmas sharing a synset) of an English word."""

    def __init__(self, folder: str | Path | None = None):
        found = Path(folder) if folder else find_dict_dir()
        if found is None or not Path(found, "index.noun").is_file():
            raise WordNetUnavailableError(
                "WordNet's database files were not found: on Debian/Ubuntu `apt-get install wordnet-base`, "
                "or point WNSEARCHDIR at a WordNet 3.x 'dict' folder"
            )
        self.folder = Path(found)
        self._index: dict[str, dict[str, list[int]]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}

    def _load_index(self, pos: str) -> dict[str, list[int]]:
        if pos not in self._index:
            table: dict[str, list[int]] = {}
            with open(self.folder / f"index.{POS_FILES[pos]}", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith(" "):  # licence header
                        continue
                    parts = line.split()
                    p_cnt = int(parts[3])
                    synset_cnt = int(parts[2])
                    offsets = parts[4 + p_cnt + 2:]
                    table[parts[0]] = [int(o) for o in offsets[:synset_cnt]]
            self._index[pos] = table
        return self._index[pos]

    def _load_exceptions(self, pos: str) -> dict[str, list[str]]:
        if pos not in self._exceptions:
            table: dict[str, list[str]] = {}
            path = self.folder / f"{POS_FILES[pos]}.exc"
            if path.is_file():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        table[parts[0]] = parts[1:]
            self._exceptions[pos] = table
        return self._exceptions[pos]

    def base_forms(self, word: str, pos: str) -> list[str]:
        """The word's dictionary forms (WordNet's morphy, reduced to the common suffix rules)."""
        word = word.lower().replace(" ", "_")
        index = self._load_index(pos)
        forms = [word] if word in index else []
        forms += [w for w in self._load_exceptions(pos).get(word, []) if w in index]
        rules = {"n": [("ies", "y"), ("ses", "s"), ("es", ""), ("s", ""), ("men", "man")],
                 "v": [("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
                       ("s", "")],
                 "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")], "r": []}[pos]
        for suffix, repl in rules:
            if word.endswith(suffix):
                stem = word[: len(word) - len(suffix)] + repl
                if stem in index and stem not in forms:
                    forms.append(stem)
        return forms

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        with open(self.folder / f"data.{POS_FILES[pos]}", "rb") as fh:
            fh.seek(offset)
            parts = fh.readline().decode("utf-8", errors="replace").split()
        count = int(parts[3], 16)
        words = parts[4:4 + 2 * count:2]
        # adjectives may carry a syntactic marker, e.g. "galore(ip)"
        return [w.split("(")[0].replace("_", " ") for w in words]

    def synonyms(self, word: str, pos: str = "n", senses: int = 2) -> list[str]:
        """Lemmas sharing one of the word's ``senses`` most frequent synsets, most frequent sense first,
        the word itself excluded. Few senses keep the meaning: a word's rare senses drift far from it."""
        if pos not in POS_FILES:
            raise ValueError(f"pos must be one of {sorted(POS_FILES)}, got {pos!r}")
        out: list[str] = []
        for base in self.base_forms(word, pos):
            for offset in self._load_index(pos)[base][:senses]:
                for lemma in self._synset_words(pos, offset):
                    if lemma.lower() != word.lower() and lemma.lower() != base.replace("_", " ") and lemma not in out:
                        out.append(lemma)
        return out

    def any_synonyms(self, word: str, senses: int = 2) -> list[str]:
        """Synonyms over every part of speech the word has (nouns first)."""
        out: list[str] = []
        for pos in ("n", "a", "v", "r"):
            out += [w for w in self.synonyms(word, pos, senses) if w not in out]
        return out


@functools.lru_cache(maxsize=1)
def load_wordnet() -> WordNet:
    return WordNet()
