"""The model wing: everything that loads, feeds and runs torch models.

One module per job; imports only go downwards in this list (no circles), and nothing here
imports the command line (``eenet_cli.commands``, ``eenet_cli.cli``, ``eenet_cli.api``):

* :mod:`~eenet_cli.runtime.messages`: one-line text for an exception from user code;
* :mod:`~eenet_cli.runtime.batch`: helpers over one batch ``x`` (tensor or dict/tuple of tensors);
* :mod:`~eenet_cli.runtime.models`: the built-in models and the ``digits`` dataset;
* :mod:`~eenet_cli.runtime.pt2`: checking a ``torch.export`` archive before torch reads it;
* :mod:`~eenet_cli.runtime.hf`: the optional ``transformers`` dependency;
* :mod:`~eenet_cli.runtime.weights`: reading weights files and loading them strictly;
* :mod:`~eenet_cli.runtime.text_model`: Hugging Face encoders as staged multi-exit models;
* :mod:`~eenet_cli.runtime.text_data`: text tables and tokenisation;
* :mod:`~eenet_cli.runtime.load`: model specs -> :class:`~eenet_cli.runtime.load.LoadedModel`;
* :mod:`~eenet_cli.runtime.data`: data specs -> checked ``(x, y)`` batches;
* :mod:`~eenet_cli.runtime.run`: one batch through a loaded model, every exit, checked;
* :mod:`~eenet_cli.runtime.early_exit`: :class:`EarlyExitModel`, a policy run for real;
* :mod:`~eenet_cli.runtime.bundle`: ``eenet export`` bundles, written, checked and loaded
  (:func:`load_bundle`);
* :mod:`~eenet_cli.runtime.profile`: timing each exit (``eenet profile``);
* :mod:`~eenet_cli.runtime.dump`: streaming exit scores to Parquet (``eenet dump``).

Importing the package imports torch (through :mod:`~eenet_cli.runtime.early_exit`); the
command line imports it lazily, inside the commands that need it, so ``eenet --help``
stays free of torch.
"""

from __future__ import annotations

from eenet_cli.runtime.early_exit import EarlyExitModel, EarlyExitResult, check_policy


def load_bundle(path, device: str = "cpu", backend: str = "torch"):
    """Load an ``eenet export`` bundle (torch and numpy only, nothing unpickled) as a callable
    module: ``preds, exits, scores = load_bundle("model.eenet")(x)``; ``backend="onnx"`` runs
    the bundle's ONNX graphs on ONNX Runtime (``eenet export --onnx``, ``pip install
    'eenet[onnx]'``) (:func:`eenet_cli.runtime.bundle.load_bundle`)."""
    from eenet_cli.runtime.bundle import load_bundle as _load

    return _load(path, device, backend=backend)


__all__ = ["EarlyExitModel", "EarlyExitResult", "check_policy", "load_bundle"]
