"""Architectures from ``transformers`` model classes, randomly initialized from configs (no download),
at a ``"tiny"`` size (tests: 1-2 layers, small widths, 32x32 images, 16 tokens) and a
``"realistic"`` size (the published widths and depths: ResNet-50, BERT-base, GPT-2, ...).

Shared by ``tests/frontend/test_families.py`` and ``bench/zoo.py``. Every model is wrapped so that
it takes plain tensors and returns one tensor (``last_hidden_state``):

- vision: ``pixel_values`` [1, 3, H, W];
- encoders: ``input_ids``, ``attention_mask`` (the last two tokens padded);
- decoders (GPT-2, Llama, Qwen2): ``input_ids``, ``attention_mask`` and, where the model takes them,
  ``position_ids``. The KV cache is left at the config's default (on), as a user calling the model
  would: the graph then concatenates the new keys onto transformers' empty cache tensor;
- Whisper: ``input_features`` [1, n_mels, frames].

Batch-norm statistics are gathered by a few train-mode passes on random images before ``eval()``:
with default running statistics the activations of a deep CNN shrink to denormals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import nn

Size = Literal["tiny", "realistic"]


@dataclasses.dataclass
class ZooModel:
    """One architecture, ready for ``hwcomp.compile(model.module, example_inputs=model.inputs)``."""

    name: str
    size: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]

    def reference(self) -> np.ndarray:
        """The PyTorch output on :attr:`inputs`."""
        with torch.no_grad():
            return self.module(*self.inputs).detach().numpy()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


# ---- wrappers: plain tensors in, last_hidden_state out -------------------------------------------

class _Vision(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


class _Text(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids).last_hidden_state


class _Audio(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=input_features).last_hidden_state


# ---- inputs ----------------------------------------------------------------------------------------

def calibrate_batchnorm(model: nn.Module, image_shape: tuple[int, ...], passes: int = 3, batch: int = 4) -> None:
    """Running statistics from ``passes`` train-mode forwards on random images (cumulative average).

    The affine parameters are first set near (1, 0), as in a trained network: some initializers
    (EfficientNet's draws gamma from N(0, 0.02)) shrink the activations 50x per layer, to ~1e-35 at
    the output, which no comparison can judge."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    with torch.no_grad():
        for bn in bns:
            bn.momentum = None  # cumulative moving average: every pass counts equally
            bn.reset_running_stats()
            if bn.affine:  # near, not at, (1, 0): the folded scale and shift stay non-trivial
                bn.weight.copy_(1 + 0.1 * torch.randn_like(bn.weight))
                bn.bias.copy_(0.1 * torch.randn_like(bn.bias))
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, *image_shape))
    model.eval()


def _text_inputs(vocab: int, seq: int, with_positions: bool = False) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, vocab, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.long)
    mask[:, -2:] = 0  # right padding: masked keys must not change the valid tokens' outputs
    if with_positions:
        return ids, mask, torch.arange(seq)[None]
    return ids, mask


def _vision(model: nn.Module, image: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    calibrate_batchnorm(model, (3, image, image))
    return _Vision(model.eval()), (torch.randn(1, 3, image, image),)


# ---- architectures ---------------------------------------------------------------------------------
# Each builder returns (wrapped module, example inputs) for a size.

def _resnet(layer_type: str) -> Callable[[Size], tuple]:
    def build(size: Size):
        from transformers import ResNetConfig, ResNetModel

        if size == "tiny":
            widths = [16, 32] if layer_type == "basic" else [32, 64]
            cfg = ResNetConfig(embedding_size=16, hidden_sizes=widths, depths=[1, 1], layer_type=layer_type)
            return _vision(ResNetModel(cfg), 32)
        if layer_type == "basic":  # ResNet-18
            cfg = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                               layer_type="basic")
        else:  # ResNet-50 (the config's default)
            cfg = ResNetConfig()
        return _vision(ResNetModel(cfg), 224)
    return build


def _mobilenet_v2(size: Size):
    from transformers import MobileNetV2Config, MobileNetV2Model

    # The block structure is fixed (17 inverted residuals); the tiny one narrows every block.
    cfg = MobileNetV2Config(depth_multiplier=0.35 if size == "tiny" else 1.0)
    return _vision(MobileNetV2Model(cfg), 32 if size == "tiny" else 224)


def _efficientnet(size: Size):
    from transformers import EfficientNetConfig, EfficientNetModel

    if size == "tiny":  # one block per stage, quarter widths; keeps the squeeze-excitation blocks
        cfg = EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.1, hidden_dim=320, image_size=32)
        return _vision(EfficientNetModel(cfg), 32)
    cfg = EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, image_size=224)  # B0
    return _vision(EfficientNetModel(cfg), 224)


def _convnext(size: Size):
    from transformers import ConvNextConfig, ConvNextModel

    # layer_scale 1.0, not 1e-6: a 1e-6 residual branch would make the comparison test the stem only
    if size == "tiny":
        cfg = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32,
                             layer_scale_init_value=1.0)
        return _vision(ConvNextModel(cfg), 32)
    return _vision(ConvNextModel(ConvNextConfig(layer_scale_init_value=1.0)), 224)  # ConvNeXt-T


def _regnet(size: Size):
    from transformers import RegNetConfig, RegNetModel

    if size == "tiny":  # Y blocks: grouped conv + squeeze-excitation
        cfg = RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y")
        return _vision(RegNetModel(cfg), 32)
    cfg = RegNetConfig(embedding_size=32, hidden_sizes=[48, 104, 208, 440], depths=[1, 3, 6, 6],
                       groups_width=8, layer_type="y")  # RegNetY-400MF
    return _vision(RegNetModel(cfg), 224)


def _vit_like(kind: str) -> Callable[[Size], tuple]:
    def build(size: Size):
        import transformers

        config_cls = getattr(transformers, f"{kind}Config")
        model_cls = getattr(transformers, f"{kind}Model")
        if size == "tiny":
            cfg = config_cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             image_size=32, patch_size=8)
            return _vision(model_cls(cfg, add_pooling_layer=False), 32)
        cfg = config_cls(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                         intermediate_size=1536, image_size=224, patch_size=16)  # ViT-S/16, DeiT-S
        return _vision(model_cls(cfg, add_pooling_layer=False), 224)
    return build


def _swin(size: Size):
    from transformers import SwinConfig, SwinModel

    if size == "tiny":
        cfg = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)
        return _vision(SwinModel(cfg), 32)
    return _vision(SwinModel(SwinConfig()), 224)  # Swin-T


def _mobilevit(size: Size):
    from transformers import MobileViTConfig, MobileViTModel

    if size == "tiny":  # five stages (downsampling 32x) are fixed; widths are not
        cfg = MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 64])
        return _vision(MobileViTModel(cfg), 64)
    return _vision(MobileViTModel(MobileViTConfig()), 256)  # MobileViT-S


def _bert_like(kind: str) -> Callable[[Size], tuple]:
    def build(size: Size, max_positions: int | None = None):
        import transformers

        config_cls = getattr(transformers, f"{kind}Config")
        model_cls = getattr(transformers, f"{kind}Model")
        if size == "tiny":
            # RoBERTa's positions start after the padding index: it needs 2 more entries
            extra = 2 if kind == "Roberta" and max_positions else 0
            cfg = config_cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             vocab_size=1000, max_position_embeddings=(max_positions or 64) + extra)
            return _Text(model_cls(cfg, add_pooling_layer=False).eval()), _text_inputs(1000, 16)
        cfg = config_cls()  # BERT-base, RoBERTa-base
        _check_positions(cfg.max_position_embeddings - (2 if kind == "Roberta" else 0), max_positions)
        return _Text(model_cls(cfg, add_pooling_layer=False).eval()), _text_inputs(cfg.vocab_size, 128)
    return build


def _distilbert(size: Size, max_positions: int | None = None):
    from transformers import DistilBertConfig, DistilBertModel

    if size == "tiny":
        cfg = DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000,
                               max_position_embeddings=max_positions or 64)
        return _Text(DistilBertModel(cfg).eval()), _text_inputs(1000, 16)
    _check_positions(DistilBertConfig().max_position_embeddings, max_positions)
    return _Text(DistilBertModel(DistilBertConfig()).eval()), _text_inputs(30522, 128)


def _gpt2(size: Size, max_positions: int | None = None):
    from transformers import GPT2Config, GPT2Model

    if size == "tiny":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=max_positions or 64, vocab_size=1000,
                         bos_token_id=0, eos_token_id=0)
        seq = 16
    else:
        cfg, seq = GPT2Config(), 128  # GPT-2 small (124M)
        _check_positions(cfg.n_positions, max_positions)
    return _Decoder(GPT2Model(cfg).eval()), _text_inputs(cfg.vocab_size, seq, with_positions=True)


def _llama_like(kind: str) -> Callable[[Size], tuple]:
    def build(size: Size, max_positions: int | None = None):
        import transformers

        config_cls = getattr(transformers, f"{kind}Config")
        model_cls = getattr(transformers, f"{kind}Model")
        if size == "tiny":  # grouped-query attention (2 KV heads for 4 query heads), RoPE, RMSNorm
            cfg = config_cls(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=max_positions or 64)
            seq = 16
        elif kind == "Qwen2":  # Qwen2-0.5B widths (896, 14 heads, 2 KV heads), 4 layers, 32k vocabulary
            cfg = config_cls(num_hidden_layers=4, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048)
            seq = 128
        else:  # a small Llama: 8 layers of width 512, 8 heads, 4 KV heads, 32k vocabulary (~44M)
            cfg = config_cls(num_hidden_layers=8, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
            seq = 128
        _check_positions(cfg.max_position_embeddings, max_positions)
        return _Decoder(model_cls(cfg).eval()), _text_inputs(cfg.vocab_size, seq, with_positions=True)
    return build


def _check_positions(have: int, want: int | None) -> None:
    if want is not None and want > have:
        raise ValueError(f"the realistic config has {have} positions; max_positions={want} is more")


#: Architectures whose builder takes ``max_positions`` (the longest sequence the model accepts).
TEXT_WITH_POSITIONS = ("bert_base", "roberta_base", "distilbert", "gpt2", "llama_small", "qwen2_small")


def _t5_encoder(size: Size):
    from transformers import T5Config, T5EncoderModel

    if size == "tiny":
        cfg = T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=1000)
        seq = 16
    else:  # t5-small's encoder
        cfg = T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, vocab_size=32128)
        seq = 128
    return _Text(T5EncoderModel(cfg).eval()), _text_inputs(cfg.vocab_size, seq)


def _bart_encoder(size: Size):
    from transformers import BartConfig, BartModel

    if size == "tiny":
        cfg = BartConfig(d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1000,
                         max_position_embeddings=64)
        seq = 16
    else:  # bart-base's encoder (BartConfig's defaults are bart-large)
        cfg = BartConfig(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                         decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)
        seq = 128
    return _Text(BartModel(cfg).get_encoder().eval()), _text_inputs(cfg.vocab_size, seq)


def _whisper_encoder(size: Size):
    from transformers import WhisperConfig, WhisperModel

    if size == "tiny":  # 64 frames of 80 mel bins -> 32 positions
        cfg = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                            max_source_positions=32, vocab_size=1000, pad_token_id=0, bos_token_id=0,
                            eos_token_id=0, decoder_start_token_id=0)
    else:  # whisper-tiny: 30 s of audio = 3000 frames -> 1500 positions
        cfg = WhisperConfig()
    frames = 2 * cfg.max_source_positions  # the encoder insists on exactly this many
    return _Audio(WhisperModel(cfg).get_encoder().eval()), (torch.randn(1, cfg.num_mel_bins, frames),)


ARCHITECTURES: dict[str, Callable[[Size], tuple]] = {
    "resnet18": _resnet("basic"),
    "resnet50": _resnet("bottleneck"),
    "mobilenet_v2": _mobilenet_v2,
    "efficientnet_b0": _efficientnet,
    "convnext_tiny": _convnext,
    "regnety_400mf": _regnet,
    "vit_small": _vit_like("ViT"),
    "deit_small": _vit_like("DeiT"),
    "swin_tiny": _swin,
    "mobilevit_s": _mobilevit,
    "bert_base": _bert_like("Bert"),
    "roberta_base": _bert_like("Roberta"),
    "distilbert": _distilbert,
    "gpt2": _gpt2,
    "llama_small": _llama_like("Llama"),
    "qwen2_small": _llama_like("Qwen2"),
    "t5_encoder": _t5_encoder,
    "bart_encoder": _bart_encoder,
    "whisper_tiny_encoder": _whisper_encoder,
}
"""Name → builder. The names describe the realistic size; ``"tiny"`` keeps the architecture."""


def build(name: str, size: Size = "tiny", seed: int = 0, max_positions: int | None = None) -> ZooModel:
    """Build architecture ``name`` (a key of :data:`ARCHITECTURES`) at ``size``, weights and inputs
    drawn from ``seed``; the module is in eval mode. ``max_positions`` (text models with learned or
    rotary positions, :data:`TEXT_WITH_POSITIONS`): the longest sequence the tiny model accepts
    (default 64; dynamic-length tests want 512); a realistic model's own limit must cover it."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if size not in ("tiny", "realistic"):
        raise ValueError(f"size must be 'tiny' or 'realistic', not {size!r}")
    import transformers

    transformers.logging.set_verbosity_error()  # config warnings (token ids outside a tiny vocab)
    torch.manual_seed(seed)
    if max_positions is not None and name not in TEXT_WITH_POSITIONS:
        raise ValueError(f"max_positions applies to {', '.join(TEXT_WITH_POSITIONS)}, not {name!r}")
    kwargs = {"max_positions": max_positions} if max_positions is not None else {}
    module, inputs = ARCHITECTURES[name](size, **kwargs)
    return ZooModel(name, size, module.eval(), tuple(inputs))


__all__ = ["ARCHITECTURES", "TEXT_WITH_POSITIONS", "ZooModel", "build", "calibrate_batchnorm"]
