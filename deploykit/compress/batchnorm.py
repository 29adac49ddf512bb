"""Re-estimating BatchNorm statistics on calibration inputs after a structural change.

Pruning a conv's input channels (or a residual stream) shifts the mean and spread of what every
BatchNorm downstream sees, while its running statistics still describe the unpruned network: the
normalised features come out shifted and mis-scaled, and that error compounds layer after layer.
Recomputing the statistics over a few hundred unlabeled inputs (a forward pass, no training)
restores each channel's first two moments, and with them much of the pruned model's fidelity
(Li et al., EagleEye 2020, "adaptive BatchNorm"). Cumulative averages (momentum None) over all
the inputs, not an exponential one, so the result does not depend on the batch order.
"""

from __future__ import annotations

import numpy as np


def reestimate(model, x: np.ndarray, batch_size: int = 64) -> int:
    """Recompute the running mean/var of every BatchNorm of `model` (in place) over the inputs
    `x`; the model's train/eval modes and momenta are restored. Returns how many BatchNorms
    were re-estimated (0: nothing touched)."""
    import torch
    from torch import nn

    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(x) == 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over every batch
            bn.train()
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            for i in range(0, len(xt), batch_size):
                xb = xt[i:i + batch_size]
                if len(xb) > 1 or i == 0:  # a batch of one has no variance to speak of
                    model(xb)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return len(bns)
