"""Task arithmetic (Ilharco et al., 2022): no training, theta = theta_o - s * (theta_aug - theta_o),
s = 2.5 in the paper (the forget-set "task vector" learned by augmentation, subtracted s times)."""
from __future__ import annotations

import torch

from .registry import Hyperparameter, MethodSpec

DEFAULT_SCALE = 2.5
SCALE = Hyperparameter("ta_scale", DEFAULT_SCALE, help="task-arithmetic s")


@torch.no_grad()
def task_arithmetic(original, augmented, scale: float = DEFAULT_SCALE):
    """Overwrite ``original``'s floating-point weights in place with theta_o - scale*(theta_aug - theta_o)
    and return it. Both models must share an architecture."""
    if scale < 0:
        raise ValueError(f"task-arithmetic scale must be >= 0, got {scale}")
    aug = augmented.state_dict()
    for name, param in original.state_dict().items():
        if name not in aug or aug[name].shape != param.shape:
            raise ValueError(f"augmented model does not match the original at {name!r}")
        if param.is_floating_point():
            delta = aug[name].to(torch.float32) - param.to(torch.float32)
            param.copy_((param.to(torch.float32) - scale * delta).to(param.dtype))
    return original


# both teachers are loaded for their weights and never run on data, so nothing is cached
METHOD = MethodSpec("task-arithmetic", None, teachers={"original": (), "augmented": ()}, data=(),
                    hyperparameters=(SCALE,), retain_terms=(), trains=False)
