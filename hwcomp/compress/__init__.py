"""Model-side (PyTorch) compression: importance criteria, masks, structured pruning, low rank, distillation.

Entry points: :func:`prune_model` / :func:`save_pruned` / :func:`load_model` (``api``); the ``hwcomp prune``
verb is :mod:`hwcomp.cli.prune`.
"""
from .api import PruneOptions, PruneReport, load_pruned, prune_model, save_pruned
from .criteria import CRITERIA, CriterionConfig, activation_frequency, weight_scores
from .deep_compression import DeepCompressionReport, deep_compression_size, share_weights
from .distill import DistillConfig, Distiller, distill
from .finetune import FinetuneConfig, finetune, recalibrate_batchnorm
from .low_rank import LowRankConfig, factorize_conv2d, factorize_linear, low_rank_model
from .prune import (
                    GradualPruner,
                    GradualSchedule,
                    Granularity,
                    MaskHooks,
                    PruneConfig,
                    apply_masks,
                    compute_masks,
                    mask_sparsity,
)
from .reconstruct import ObsConfig, obs_prune_units
from .size import SizeReport, count_parameters, layer_costs, size_report
from .structured import (
                    ChannelGroup,
                    bert_ffn_groups,
                    drop_layers,
                    group_masks,
                    head_scores,
                    prune_heads,
                    prune_units,
                    sequential_groups,
                    shrink_group,
                    unit_scores,
)

__all__ = [
    "PruneOptions", "PruneReport", "load_pruned", "prune_model", "save_pruned",
    "CRITERIA", "CriterionConfig", "activation_frequency", "weight_scores",
    "DeepCompressionReport", "deep_compression_size", "share_weights",
    "DistillConfig", "Distiller", "distill", "FinetuneConfig", "finetune", "recalibrate_batchnorm",
    "LowRankConfig", "factorize_conv2d", "factorize_linear", "low_rank_model",
    "GradualPruner", "GradualSchedule", "Granularity", "MaskHooks", "PruneConfig", "apply_masks",
    "compute_masks", "mask_sparsity", "merge_masks",
    "ObsConfig", "obs_prune_units",
    "SizeReport", "count_parameters", "layer_costs", "size_report",
    "ChannelGroup", "bert_ffn_groups", "drop_layers", "group_masks", "head_scores", "prune_heads",
    "prune_units", "sequential_groups", "shrink_group", "unit_scores",
]
