"""The optional ``transformers`` dependency of the text models and tokenizers.

transformers is imported only when a text model or tokenizer is actually built
(:func:`require_transformers`), so importing eenet (and ``eenet --help``) never imports
it. Nothing is ever downloaded: models and tokenizers are local folders
(``local_files_only=True``).
"""

from __future__ import annotations

from eenet_cli.errors import InputError

DEFAULT_MAX_LENGTH = 128  # tokens per text, unless the model or --max-length says otherwise


def require_transformers():
    """The transformers module, or one clear line saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise InputError("text models need the transformers package: pip install 'eenet[text]' (or pip install transformers)") from None
    return transformers


class quiet_transformers:
    """No progress bars or load-report warnings from transformers while eenet loads a model
    (eenet's own stderr stays one line per event); the previous settings come back after."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._log = hf_logging
        self._level = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled() if hasattr(hf_logging, "is_progress_bar_enabled") else None
        hf_logging.set_verbosity_error()
        if self._bars is not None:
            hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        self._log.set_verbosity(self._level)
        if self._bars:
            self._log.enable_progress_bar()
        return False
