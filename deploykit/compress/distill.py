"""Knowledge distillation (Hinton et al.): train a compressed student on its teacher's soft targets.

loss = (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + alpha * CE(student, y)

T > 1 exposes the teacher's "dark knowledge" (which wrong classes look alike); the T^2 factor
keeps the soft-target gradients on the scale of the hard-label ones. Without labels (alpha = 0)
the teacher alone supervises, so unlabeled user data is enough to recover a pruned / low-rank /
compact student.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 5
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label cross-entropy (0: soft targets only)
    lr: float = 1e-3  # Adam
    batch_size: int = 64
    seed: int = 0


def check(cfg: DistillConfig, has_labels: bool) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("epochs and batch size must be >= 1")
    if cfg.temperature <= 0:
        raise InputError(f"temperature must be > 0, got {cfg.temperature}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.alpha > 0 and not has_labels:
        raise InputError("alpha > 0 needs labels; use alpha=0 for unlabeled data")
    if cfg.lr <= 0:
        raise InputError(f"learning rate must be > 0, got {cfg.lr}")


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, size):
        yield order[i:i + size]


def soft_target_loss(student_logits, teacher_logits, temperature: float):
    """Hinton's soft-target term: T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def distill(student, teacher, x: np.ndarray, y: np.ndarray | None,
            cfg: DistillConfig = DistillConfig()) -> list[float]:
    """Train `student` in place against `teacher` (frozen, eval mode); returns loss per epoch."""
    import torch
    import torch.nn.functional as F

    check(cfg, y is not None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    xt = torch.from_numpy(x)
    yt = None if y is None else torch.from_numpy(y)
    teacher.eval()
    with torch.no_grad():  # the teacher is fixed: compute its soft targets once
        t_logits = torch.cat([teacher(xt[i:i + 256]) for i in range(0, len(xt), 256)])
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    t = cfg.temperature
    history = []
    for _ in range(cfg.epochs):
        student.train()
        total, count = 0.0, 0
        for idx in _batches(len(xt), cfg.batch_size, rng):
            idx = torch.from_numpy(idx)
            out = student(xt[idx])
            soft = soft_target_loss(out, t_logits[idx], t)
            loss = (1 - cfg.alpha) * soft
            if cfg.alpha > 0:
                loss = loss + cfg.alpha * F.cross_entropy(out, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        history.append(total / count)
    student.eval()
    return history


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 3, lr: float = 1e-3,
          batch_size: int = 64, seed: int = 0) -> list[float]:
    """Plain cross-entropy training (e.g. of a teacher); returns loss per epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for idx in _batches(len(xt), batch_size, rng):
            idx = torch.from_numpy(idx)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(xt))
    model.eval()
    return history


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        pred = torch.cat([model(xt[i:i + 512]).argmax(1) for i in range(0, len(xt), 512)])
    return float((pred.numpy() == y).mean())
