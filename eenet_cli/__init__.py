"""eenet: learn and check early-exit policies for multi-exit networks under a budget.

The public Python API (numpy in, dicts out; torch only for EENet training)::

    from eenet_cli import load_predictions, fit_policy, apply_policy, evaluate
"""

from eenet_cli._version import __version__

__all__ = ["__version__", "load_predictions", "fit_policy", "apply_policy", "evaluate", "predictions_from_arrays"]


def __getattr__(name: str):  # lazy: `import eenet_cli` stays light
    if name in __all__[1:]:
        from eenet_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'eenet_cli' has no attribute {name!r}")
