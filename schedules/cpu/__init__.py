"""Default schedules shared by the LLVM CPU targets (x86 and ARM), parametrized by the target's
:class:`~hwcomp.target.CpuCaps`."""

from hwcomp.target import CpuCaps

from .conv import BlockedConv, ConvKnobs
from .pool import WindowReduction
from .rows import Injective, RowReduction
from .rules import TiledReduction, TileKnobs, schedule_injective
from .winograd import WINOGRAD_ATTR, WinogradTransform

#: Block annotations of kernels that only hwcomp's rule schedules: tuning leaves their functions out.
#: Winograd's output transform: MetaSchedule's best after 20 minutes ran 5-14x slower than
#: ``WinogradTransform`` (281 us against ~20 on ResNet-18's 56x56 layer, Zen 4), so its trials bought nothing.
UNTUNED_BLOCKS = (WINOGRAD_ATTR,)


def default_rules(caps: CpuCaps, knobs: TileKnobs | None = None) -> list:
    """The rule list applied, in order, to every PrimFunc a tuning database does not cover, for a
    CPU with ``caps`` (``Target.cpu_caps``: vector width, vector registers — they size the
    convolution's register tile — and one core's L2)."""
    from tvm.s_tir import dlight as dl

    vector_bits, registers = caps.vector_bits, caps.registers
    if knobs is None and vector_bits >= 512 and registers >= 32:
        # AVX-512: 8 rows x 2 zmm = 16 accumulators (of 32 registers); 4 rows left half the register
        # file idle. Measured on an Intel Xeon (2 threads, BERT/ViT shapes): 1.10-1.21x faster
        # at 128 rows, 1.6x at 7, equal at 1500. Narrower vectors keep the default: unmeasured.
        # Up to 3 zmm of columns (8 x 48: 24 accumulators), the packed weights' 48-wide panels
        # (``Target.dense_panels``): 1.06-1.08x over 8 x 32 at BERT and ViT Linear shapes.
        knobs = TileKnobs(mr=8, nr_vectors=3)
    # WindowReduction before TiledReduction: pooling is one reduction too, and TiledReduction would
    # take it for a matmul (10x slower)
    return [WinogradTransform(vector_bits), BlockedConv(vector_bits, registers=registers), WindowReduction(vector_bits, registers=registers),
            TiledReduction(vector_bits, knobs, l2_bytes=caps.l2_bytes),
            RowReduction(vector_bits), dl.cpu.Reduction(), Injective(vector_bits)]


__all__ = [
    "UNTUNED_BLOCKS",
    "BlockedConv",
    "ConvKnobs",
    "CpuCaps",
    "Injective",
    "RowReduction",
    "TileKnobs",
    "TiledReduction",
    "WindowReduction",
    "WinogradTransform",
    "default_rules",
    "schedule_injective",
]
