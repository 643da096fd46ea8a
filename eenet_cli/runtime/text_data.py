"""Text data for ``eenet dump`` and ``profile --policy``: tables of texts and labels, and tokenisation.

:func:`read_text_table` reads a ``.csv``/``.tsv``/``.parquet`` file with a
text column and an integer label column, and :class:`TextOptions` tokenises batches of
strings with the model's tokenizer (``--tokenizer FOLDER``, by default the model's own
folder) with padding to the longest text in the batch and truncation at ``max_length``
tokens (128 unless given).

:class:`TextBatches` gives re-iterable ``(tokenised dict, labels)`` batches over the texts
of a table; :func:`is_text` tells a batch of raw strings (tokenised on the fly by
:class:`TextOptions`) from tensors. The text models themselves are
:mod:`eenet_cli.runtime.text_model`.

transformers is imported only when a tokenizer is actually loaded, so importing this
module never imports it. Nothing is ever downloaded: tokenizers are local folders
(``local_files_only=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eenet_cli.artifacts.tables import read_text_table  # noqa: F401  (text data files are read there)
from eenet_cli.errors import InputError
from eenet_cli.runtime.hf import (
    DEFAULT_MAX_LENGTH,
    quiet_transformers,
    require_transformers,
)

TEXT_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


# --------------------------------------------------------------------------- tokenizers


def load_tokenizer(path: str | Path, field: str = "--tokenizer"):
    """A tokenizer from a local folder (``tokenizer.json``, ``vocab.txt``, ...); never downloaded."""
    transformers = require_transformers()
    p = Path(path)
    if not p.is_dir():
        raise InputError("no such folder; a tokenizer is a local folder (tokenizer.json, vocab.txt, ...); eenet never downloads", source=str(path), field=field)
    try:
        with quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"not a readable tokenizer folder ({type(e).__name__}: {msg[:200]})", source=str(path), field=field) from None


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` (int64), padded to the longest text, truncated at ``max_length``."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=int(max_length), return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def is_text(a: Any) -> bool:
    """A batch of raw strings (list/tuple of str, or a numpy array of strings)?"""
    if isinstance(a, np.ndarray):
        return a.ndim == 1 and (a.dtype.kind in "US" or (a.dtype == object and a.size > 0 and all(isinstance(v, str) for v in a)))
    return isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(v, str) for v in a)


@dataclass
class TextOptions:
    """How ``dump`` (and ``profile --policy``) read and tokenise text data.

    The tokenizer is ``tokenizer`` (a folder or a tokenizer object) or else the model's
    own folder (``model.tokenizer_path``); it is loaded on first use.
    """

    tokenizer: Any = None
    text_column: str | None = None
    label_column: str | None = None
    max_length: int | None = None
    model: Any = None
    _tok: Any = field(default=None, repr=False)

    @property
    def explicit_columns(self) -> bool:
        return self.text_column is not None or self.label_column is not None

    @property
    def length(self) -> int:
        if self.max_length is not None:
            return int(self.max_length)
        return int(getattr(self.model, "max_length", None) or DEFAULT_MAX_LENGTH)

    def tokenizer_source(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        return getattr(self.model, "tokenizer_path", None)

    def check(self, data_spec: str) -> None:
        """Text data needs a tokenizer: fail before running anything when there is none."""
        if self.tokenizer_source() is None:
            raise InputError(
                "text data needs a tokenizer: give --tokenizer FOLDER (or use a Hugging Face model folder as MODEL, whose tokenizer is used)",
                source=data_spec,
                field="--tokenizer",
            )
        if self.max_length is not None and self.max_length < 1:
            raise InputError(f"must be at least 1, got {self.max_length}", field="--max-length")

    def get_tokenizer(self) -> Any:
        if self._tok is None:
            src = self.tokenizer_source()
            if src is None:
                raise InputError("text data needs a tokenizer: give --tokenizer FOLDER", field="--tokenizer")
            self._tok = load_tokenizer(src, "--tokenizer" if self.tokenizer is not None else "tokenizer (the model folder)") if isinstance(src, (str, Path)) else src
        return self._tok

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.get_tokenizer(), [str(t) for t in texts], self.length)


# --------------------------------------------------------------------------- tables


class TextBatches:
    """Re-iterable ``(tokenised dict, labels)`` batches over in-memory texts."""

    def __init__(self, texts: list[str], labels: np.ndarray, batch_size: int, options: TextOptions):
        self.texts, self.labels, self.batch_size, self.options = texts, labels, int(batch_size), options

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for s in range(0, len(self.labels), self.batch_size):
            x = self.options.tokenize(self.texts[s : s + self.batch_size])
            yield x, torch.from_numpy(self.labels[s : s + self.batch_size])


def is_text_table(spec: str) -> bool:
    return Path(spec).suffix.lower() in TEXT_SUFFIXES
