"""What one layer may become: dense fp32, int8, block-sparse at a level and block shape, sparse+int8,
or low rank (``rank``: the percentage of the layer's full rank ``min(in, out)`` kept, so one option
applies to every shape); and, on a layer whose outputs feed one other Linear through channel-wise
ops (a transformer FFN), a structured width (``width``: the percentage of its output units kept,
fp32 or int8; see :mod:`.widths`)."""

from __future__ import annotations

import dataclasses

KINDS = ("dense", "int8", "sparse", "sparse_int8", "low_rank")


@dataclasses.dataclass(frozen=True, order=True)
class Option:
    kind: str = "dense"
    sparsity: float = 0.0
    block: tuple[int, int] = (1, 1)
    rank: int = 0
    width: int = 100  # percent of the output units kept (a structured width; dense and int8 only)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}; one of {KINDS}")
        if not 0 < self.width <= 100 or (self.width < 100 and self.kind not in ("dense", "int8")):
            raise ValueError(f"width {self.width}% is for dense or int8 layers (0 < width <= 100), not {self.kind}")

    @property
    def label(self) -> str:
        if self.width < 100:
            return f"{'fp32' if self.kind == 'dense' else 'int8'} w{self.width}%"
        if self.kind == "dense":
            return "fp32"
        if self.kind == "int8":
            return "int8"
        if self.kind == "low_rank":
            return f"rank{self.rank}%"
        sp = f"bsr{round(self.sparsity * 100)}%-{self.block[0]}x{self.block[1]}"
        return sp + ("+int8" if self.kind == "sparse_int8" else "")

    def rank_for(self, k: int, n: int) -> int:
        """The rank this option gives a ``k → n`` layer."""
        return max(1, round(self.rank / 100 * min(k, n)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sparsity": self.sparsity, "block": list(self.block), "rank": self.rank,
                "width": self.width}

    @classmethod
    def from_dict(cls, d: dict) -> Option:
        return cls(d["kind"], float(d.get("sparsity", 0.0)), tuple(d.get("block", (1, 1))), int(d.get("rank", 0)),
                   int(d.get("width", 100)))


def option_space(block: tuple[int, int], sparsities=(0.5, 0.7, 0.8, 0.9), int8: bool = True,
                 sparse_int8: bool = False, ranks=()) -> list[Option]:
    """The options a target offers: dense, int8 (when it has an int8 path), sparsity levels at the
    target's preferred block, sparse+int8 where available, and low rank at ``ranks`` (percent)."""
    opts = [Option("dense")]
    if int8:
        opts.append(Option("int8"))
    opts += [Option("sparse", s, tuple(block)) for s in sparsities]
    if sparse_int8:
        opts += [Option("sparse_int8", s, tuple(block)) for s in sparsities]
    opts += [Option("low_rank", rank=int(r)) for r in ranks]
    return opts
