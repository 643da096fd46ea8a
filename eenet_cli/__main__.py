"""``python -m eenet_cli``: the ``eenet`` command.

``python -m`` puts the working folder first on ``sys.path``, so a ``numpy.py`` or
``safetensors.py`` lying there would be imported instead of the installed package. Before
anything else is imported, the folder moves to the end of the path, where the ``eenet``
script has it (see :func:`eenet_cli.runtime.load.add_working_folder_to_path`): modules named
by ``module:factory`` specs are still found there, after every installed package.
"""

import os
import sys


def _working_folder_last() -> None:
    """Every entry naming the working folder (``python -m``'s first one, an empty PYTHONPATH
    element such as the one ``PYTHONPATH=$PYTHONPATH:/x`` leaves) moves to the end, once."""
    try:
        cwd = os.getcwd()
    except OSError:
        return
    kept = [p for p in sys.path if not (p == "" or os.path.abspath(p) == cwd)]
    if len(kept) != len(sys.path):  # it was on the path: still importable, after everything else
        sys.path[:] = [*kept, cwd]


if __name__ == "__main__":
    _working_folder_last()
    from eenet_cli.cli import main

    main()
