"""PruneWeights: magnitude-prune the constant weights of matmul (Linear) and conv2d layers.

Runs on a module whose weights are bound as constants (``hwcomp.compile`` runs compression passes
there). A Linear appears as ``matmul(x, permute_dims(W))`` with ``W[N, K]``; a weight used directly
(``matmul(x, Wt)``, ``Wt[K, N]``) is pruned in the same ``[N, K]`` orientation, so a block ``(r, c)``
always means ``r`` output channels × ``c`` input channels — the block :class:`DenseToBSR` packs.
Conv2d weights ``[O, I, kh, kw]`` are pruned as ``[O, I·kh·kw]``.

``block=(1, 1)`` is unstructured pruning; ``scope="layer"`` prunes every weight to ``sparsity``,
``scope="global"`` ranks the blocks of all weights together (layers end up with different sparsity).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import op_name
from hwcomp.sparse_format.bsr import (
    apply_block_mask,
    block_scores,
    prune_mask_from_scores,
)


@dataclasses.dataclass(frozen=True)
class _Site:
    """One prunable constant: how to view it as ``[N, K]`` and back."""

    const: GenericConst
    name: str
    kind: str  # "matmul_t" (const is W[N, K]), "matmul" (const is W.T), "conv" (const is [O, I, kh, kw])

    def as_nk(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "matmul":
            return a.T
        if self.kind == "conv":
            return a.reshape(a.shape[0], -1)
        return a

    def from_nk(self, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "matmul":
            return np.ascontiguousarray(w.T)
        return w.reshape(shape)


def find_weight_sites(func: relax.Function, min_elements: int = 0) -> list[_Site]:
    """Constant 2-D matmul weights (direct or through a 2-D ``permute_dims``) and conv2d weights."""
    var2val = relax.analysis.get_var2val(func)
    sites: list[_Site] = []
    seen: set = set()

    def add(const, name: str, kind: str) -> None:
        arr_shape = tuple(int(d) for d in const.value.shape)
        if const in seen or int(np.prod(arr_shape)) < max(min_elements, 1):
            return
        if str(const.value.dtype) not in ("float32", "float16", "float64"):
            return
        seen.add(const)
        sites.append(_Site(const, name, kind))

    for var, val in var2val.items():
        op = op_name(val)
        if op == "relax.matmul":
            w = val.args[1]
            if isinstance(w, relax.Var) and w in var2val:
                inner = var2val[w]
                if (op_name(inner) == "relax.permute_dims" and isinstance(inner.args[0], GenericConst)
                        and len(inner.args[0].value.shape) == 2):
                    add(inner.args[0], var.name, "matmul_t")
            elif isinstance(w, GenericConst) and len(w.value.shape) == 2:
                add(w, var.name, "matmul")
        elif (op == "relax.nn.conv2d" and isinstance(val.args[1], GenericConst)
              and int(val.attrs.groups) == 1 and str(val.attrs.kernel_layout) == "OIHW"):
            add(val.args[1], var.name, "conv")
    return sites


@mutator
class _Replace(PyExprMutator):
    def __init__(self, table: dict):
        super().__init__()
        self.table = table

    def visit_generic_const_(self, const: GenericConst) -> relax.Expr:
        return self.table.get(const, const)


@dataclasses.dataclass
class PruneWeights:
    """``IRModule -> IRModule``: zero the lowest-magnitude ``block`` tiles of every prunable weight.

    ``norm``: block score, ``"l1"`` or ``"l2"``. ``min_elements``: weights smaller than this are kept
    (tiny heads cost nothing and are sensitive). After a call, ``report`` lists per layer
    ``{"layer", "shape", "sparsity"}`` (block sparsity reached).
    """

    sparsity: float
    block: tuple[int, int] = (1, 1)
    norm: str = "l1"
    scope: str = "layer"
    min_elements: int = 1024
    report: list[dict] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        self.block = (int(self.block[0]), int(self.block[1]))

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.report = []
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            sites = find_weight_sites(func, self.min_elements)
            if not sites:
                continue
            table = self._prune(sites)
            out[gv] = _Replace(table).visit_expr(func)
        return out

    def _prune(self, sites: list[_Site]) -> dict:
        arrays = [s.const.value.numpy() for s in sites]
        weights = [s.as_nk(a) for s, a in zip(sites, arrays)]
        scores = [block_scores(w, self.block, self.norm) for w in weights]
        if self.scope == "global":
            flat = np.concatenate([s.ravel() for s in scores])
            keep_all = prune_mask_from_scores(flat, self.sparsity)
            offsets = np.cumsum([0] + [s.size for s in scores])
            keeps = [keep_all[a:b].reshape(s.shape) for a, b, s in zip(offsets[:-1], offsets[1:], scores)]
        else:
            keeps = [prune_mask_from_scores(s, self.sparsity) for s in scores]
        table = {}
        for site, arr, w, keep in zip(sites, arrays, weights, keeps):
            pruned = site.from_nk(apply_block_mask(w, keep, self.block), arr.shape)
            table[site.const] = relax.const(np.ascontiguousarray(pruned))
            self.report.append({"layer": site.name, "shape": list(w.shape),
                                "sparsity": round(1.0 - float(keep.mean()), 4)})
        return table
