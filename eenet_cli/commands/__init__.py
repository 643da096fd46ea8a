"""Subcommands; importing this package registers each on :data:`eenet_cli.cli.app`."""

from eenet_cli.commands import evaluate_cmd, fit_cmd, misc_cmd  # noqa: F401

try:  # model-side commands (profile, dump) register themselves the same way
    from eenet_cli.commands import model_cmd  # noqa: F401
except ImportError as e:  # pragma: no cover - only while that module is absent
    if "model_cmd" not in str(e):
        raise

try:
    from eenet_cli.commands import plot_cmd  # noqa: F401
except ImportError as e:  # pragma: no cover
    if "plot_cmd" not in str(e):
        raise
