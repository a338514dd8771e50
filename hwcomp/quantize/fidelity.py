"""Fidelity: how far the int8 model is from fp32, per model and per layer, and the fallback.

* :func:`compare_outputs` — cosine (flattened, per output, the worst one), max abs error and top-1
  agreement (argmax over the last axis, for outputs whose last axis is longer than 1) of the
  quantized model against the fp32 one on held-out inputs.
* :func:`layer_errors` — each quantized layer alone: its fp32 output on the recorded calibration
  activations against the same layer with int8 weights and activations (NumPy; exact integer
  products), as cosine, max abs error and relative L2 error. The layer with the lowest cosine
  loses most.
* :func:`fallback` — ``--fidelity-target``: while the model cosine on held-out inputs is below
  the target, leave the worst layers (by the per-layer ranking) in fp32: 1, 2, 4, ... of them,
  re-realizing and re-measuring each time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import qmath
from .graph import Graph, apply_steps


def compare_outputs(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> dict:
    cos, err, agree, total = [], 0.0, 0, 0
    for ref, out in zip(reference, outputs):
        for r, o in zip(ref, out):
            r64, o64 = np.asarray(r, np.float64), np.asarray(o, np.float64)
            if r64.shape != o64.shape:
                return {"cosine": 0.0, "max_abs_err": float("inf"), "top1_agreement": None, "samples": len(outputs)}
            cos.append(qmath.cosine(r64, o64))
            if r64.size:
                err = max(err, float(np.max(np.abs(r64 - o64))))
            if r64.ndim >= 1 and r64.shape[-1] > 1 and np.issubdtype(np.asarray(r).dtype, np.floating):
                a, b = r64.argmax(-1), o64.argmax(-1)
                agree += int((a == b).sum())
                total += a.size
    return {"cosine": float(min(cos)) if cos else 1.0, "mean_cosine": float(np.mean(cos)) if cos else 1.0,
            "max_abs_err": err, "top1_agreement": (agree / total) if total else None, "samples": len(outputs)}


def _act(y: np.ndarray, act: str | None) -> np.ndarray:
    if act == "relu":
        return np.maximum(y, 0)
    if act == "relu6":
        return np.clip(y, 0, 6)
    if act == "silu":
        return y / (1 + np.exp(-y))
    if act == "gelu":
        return qmath.gelu(y.astype(np.float32)).astype(np.float64)
    if act == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
    return y


def _conv(x, w, at):
    import torch

    pt, pl, pb, pr = (int(v) for v in at.padding)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=[int(v) for v in at.strides],
                                      dilation=[int(v) for v in at.dilation], groups=int(at.groups)).numpy()


def layer_errors(mod, realizer, kept: list[dict]) -> list[dict]:
    """Per quantized layer: int8 vs fp32 on the kept calibration activations (module docstring)."""
    g = Graph(mod["main"])
    rows = []
    for layer in getattr(realizer, "layers", []):
        info = realizer.layer_params.get(layer.id)
        if layer.skipped or info is None:
            continue
        ys_f, ys_q, ok = [], [], True
        for sample in kept:
            xs = []
            for operand, key, p in zip(layer.operands, layer.keys, info["inputs"]):
                root, steps, factor, _k = g.trace(operand)
                if key not in sample:
                    ok = False
                    break
                x = apply_steps(sample[key].astype(np.float64), steps)
                if x is None:
                    ok = False
                    break
                x = x * factor
                sm = info.get("smooth")
                div = 1.0 if sm is None else sm.astype(np.float64)
                # codes on the root's grid, seen through the same steps (scale already includes factor)
                q = qmath.quantize(x / factor / div, p.scale / factor, p.zp, p.dtype, realizer.config.bits)
                xs.append((x, (q.astype(np.float64) - p.zp) * p.scale * div))
            if not ok:
                break
            plan = info["plan"]
            if layer.kind == "dense":
                (x, xq), = xs
                wq, s_w = realizer._weights(layer)
                w = layer.weight.astype(np.float64)
                wd = wq.astype(np.float64) * s_w.astype(np.float64)[:, None]
                if info.get("smooth") is not None:
                    wd = wd / info["smooth"].astype(np.float64)[None, :]
                b = 0.0 if plan.bias is None else plan.bias.astype(np.float64)
                yf = _act(x.reshape(-1, x.shape[-1]) @ w.T + b, plan.act)
                yq = _act(xq.reshape(-1, xq.shape[-1]) @ wd.T + b, plan.act)
            elif layer.kind == "conv2d":
                (x, xq), = xs
                wq, s_w = realizer._weights(layer)
                at = g.value(layer.var).attrs
                b = 0.0 if plan.bias is None else plan.bias.astype(np.float64).reshape(1, -1, 1, 1)
                wd = wq.astype(np.float64) * s_w.astype(np.float64).reshape(-1, 1, 1, 1)
                yf = _act(_conv(x, layer.weight.astype(np.float64), at) + b, plan.act)
                yq = _act(_conv(xq, wd, at) + b, plan.act)
            else:
                (a, aq), (bm, bq) = xs
                yf, yq = a @ bm, aq @ bq
            ys_f.append(yf)
            ys_q.append(yq)
        if not ok or not ys_f:
            rows.append({"layer": layer.id, "names": list(layer.names), "kind": layer.kind, "cosine": None})
            continue
        yf, yq = np.concatenate([y.ravel() for y in ys_f]), np.concatenate([y.ravel() for y in ys_q])
        rows.append({"layer": layer.id, "names": list(layer.names), "kind": layer.kind,
                     "cosine": qmath.cosine(yf, yq), "max_abs_err": float(np.max(np.abs(yf - yq))),
                     "rel_l2": float(np.linalg.norm(yf - yq) / max(np.linalg.norm(yf), 1e-30))})
    return rows


def worst_first(rows: list[dict]) -> list[str]:
    """The fallback's order: measured layers worst first, then those the per-layer probe could not
    measure (an operand it cannot trace, such as a max-pool's output), in graph order — last, but
    ranked, so a target the measured layers cannot meet still ends with every layer in fp32 (before,
    ResNet-50's two layers after the stem's max-pool stayed int8 and a 0.99 target ended at 0.76)."""
    scored = [r for r in rows if r.get("cosine") is not None]
    return [r["layer"] for r in sorted(scored, key=lambda r: r["cosine"])] + \
        [r["layer"] for r in rows if r.get("cosine") is None]


@dataclasses.dataclass
class FidelityReport:
    model: dict | None  # compare_outputs of the final module on held-out inputs (None: not measured)
    layers: list[dict]  # layer_errors
    fp32_layers: list[str]  # left in fp32 by the fallback
    target: float | None
    met: bool | None
    history: list[dict]

    def worst(self, n: int = 5) -> list[dict]:
        scored = [r for r in self.layers if r.get("cosine") is not None]
        return sorted(scored, key=lambda r: r["cosine"])[:n]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        m = self.model
        lines = []
        if m:
            lines.append(f"int8 vs fp32 on {m.get('samples')} held-out input(s): cosine {m['cosine']:.6f}, "
                         f"max abs err {m['max_abs_err']:.4g}"
                         + (f", top-1 agreement {m['top1_agreement']:.4f}" if m.get("top1_agreement") is not None
                            else ""))
        if self.target is not None:
            lines.append(f"fidelity target {self.target}: {'met' if self.met else 'NOT met'}"
                         + (f"; left in fp32: {', '.join(self.fp32_layers)}" if self.fp32_layers else ""))
        w = self.worst(5)
        if w:
            lines.append("layers losing most (alone, cosine vs fp32): "
                         + ", ".join(f"{r['layer']}{'(' + r['names'][-1] + ')' if len(r['names']) > 1 else ''} "
                                     f"{r['cosine']:.5f}" for r in w))
        return "\n".join(lines)


def fallback(evaluate, ranking: list[str], target: float) -> tuple[list[str], dict, list[dict]]:
    """``evaluate(force_float) -> compare_outputs dict``; returns (layers left fp32, last result, history)."""
    history = []
    res = evaluate([])
    history.append({"fp32_layers": [], **res})
    if res["cosine"] >= target or not ranking:
        return [], res, history
    k = 1
    while True:
        force = ranking[:k]
        res = evaluate(force)
        history.append({"fp32_layers": list(force), **res})
        if res["cosine"] >= target or k >= len(ranking):
            return force, res, history
        k = min(2 * k, len(ranking))
