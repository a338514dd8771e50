"""The accuracy-vs-sparsity chart of ``bench/accuracy.py`` (``bench/results/accuracy.png``)."""

from __future__ import annotations

import itertools
from pathlib import Path


def plot(digits: dict, path: Path, criteria: tuple[str, ...], granularities: tuple[str, ...]) -> None:
    """Accuracy vs sparsity per criterion and granularity, one panel per mode (one-shot, fine-tuned,
    distilled), from ``bench/accuracy.py``'s digits results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("oneshot", "finetune", "distill")
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    runs = [r for r in digits["runs"] if r["criterion"] in criteria]
    styles = {"unstructured": "-", "block:4x1": "--", "block:16x1": ":"}
    colors = {"l1": "tab:blue", "taylor": "tab:red", "fisher": "tab:green"}
    for ax, mode in zip(axes, modes):
        for crit, gran in itertools.product(criteria, granularities):
            pts = sorted((r["sparsity"], r["accuracy"]) for r in runs
                         if r["mode"] == mode and r["criterion"] == crit and r["granularity"] == gran)
            if pts:
                ax.plot([100 * s for s, _ in pts], [a for _, a in pts], styles[gran], color=colors[crit],
                        marker="o", label=f"{crit} {gran}")
        ax.axhline(digits["dense_acc"], color="black", lw=0.8, label="dense fp32")
        low = min([r["accuracy"] for r in runs if r["mode"] == mode], default=90.0)
        ax.set_ylim(max(0.0, low - 2.0 if mode != "oneshot" else low - 5.0), 100.5)
        ax.set_title({"oneshot": "one-shot", "finetune": "fine-tuned", "distill": "fine-tuned + distilled"}[mode])
        ax.set_xlabel("sparsity of the pruned layers (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("digits test accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Digits CNN: accuracy vs sparsity per criterion and granularity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
