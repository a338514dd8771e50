"""Distillation and fine-tuning improve a pruned student on a tiny task."""
from __future__ import annotations

import copy

import torch
from compress_helpers import batches, make_task, train
from torch import nn

from hwcomp.compress.criteria import weight_scores
from hwcomp.compress.distill import DistillConfig, Distiller, distill, soft_target_loss
from hwcomp.compress.finetune import FinetuneConfig, evaluate_loss
from hwcomp.compress.prune import PruneConfig, apply_masks, compute_masks


def test_soft_target_loss_is_zero_only_on_agreement():
    t = torch.randn(5, 4)
    assert float(soft_target_loss(t, t, 2.0)) < 1e-6
    assert float(soft_target_loss(torch.randn(5, 4), t, 2.0)) > 1e-3


def test_distillation_lowers_student_loss():
    x, y = make_task(1024)
    train_data, test_data = batches(x[:768], y[:768]), batches(x[768:], y[768:])
    teacher = train(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3)), train_data, steps=300)
    student = copy.deepcopy(teacher)
    masks = compute_masks(weight_scores(student, "l1", names=["0.weight", "2.weight"]), PruneConfig(0.8))
    apply_masks(student, masks)
    objective = Distiller(student, teacher, DistillConfig(temperature=2.0, alpha=0.9))
    before_kd, before_ce = evaluate_loss(student, test_data, objective), evaluate_loss(student, test_data)
    distill(student, teacher, train_data, DistillConfig(temperature=2.0, alpha=0.9),
            FinetuneConfig(epochs=10, lr=1e-2), masks=masks)
    after_kd, after_ce = evaluate_loss(student, test_data, objective), evaluate_loss(student, test_data)
    assert after_kd < 0.8 * before_kd, (before_kd, after_kd)
    assert after_ce < before_ce, (before_ce, after_ce)
    assert (student[0].weight[~masks["0.weight"]] == 0).all()


def test_hidden_state_matching_pulls_hidden_states_together():
    x, y = make_task(256)
    data = batches(x, y)
    teacher = train(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), data)
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    cfg = DistillConfig(alpha=1.0, hidden_weight=1.0, hidden_pairs=[("0", "0")])

    def hidden_gap() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(student[0](x), teacher[0](x)))

    before = hidden_gap()
    distill(student, teacher, data, cfg, FinetuneConfig(epochs=20, lr=5e-2))
    assert hidden_gap() < 0.2 * before
