"""Learning with torch: trainers that :mod:`eenet_cli.core` receives as arguments.

``eenet_cli.core`` is numpy-only and never imports this package; :mod:`eenet_cli.api` wires
the trainer in (``learner=eenet_cli.learn.eenet_torch.train_eenet``) when an EENet-family
method is asked for. Importing this package does not import torch.
"""
