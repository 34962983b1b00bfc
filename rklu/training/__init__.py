"""Training: config/presets, the shared Trainer loop, the finetune/augment/unlearn stages and their CLI.

``from rklu.training import finetune, augment, unlearn`` (see :mod:`rklu.training.stages`)."""
from .stages import augment, finetune, model_dir, unlearn  # noqa: F401
