"""Shared benchmark plumbing: result files, tables, the ONNX Runtime baseline."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "date": datetime.datetime.now().isoformat(timespec="seconds"), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def print_table(rows: list[dict], cols: list[str]) -> None:
    cols = [c for c in cols if any(c in r for r in rows)]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


def ort_session(model, inputs, onnx_path: Path):
    """Export ``model`` to ONNX (dynamo exporter, opset 17) and open an ONNX Runtime CPU session.

    Returns ``(session, feeds)`` or ``(None, None)`` with a printed reason when export fails.
    """
    import torch

    try:
        import onnxruntime as ort

        names = [f"input{i}" for i in range(len(inputs))]
        torch.onnx.export(model, tuple(inputs), str(onnx_path), dynamo=True, opset_version=17,
                          input_names=names)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        return sess, feeds
    except Exception as e:  # the baseline is optional; say why it is missing
        print(f"  (ONNX Runtime baseline skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None, None
