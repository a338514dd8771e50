"""The policy file: JSON that round-trips, plus a human-readable per-layer table."""

from __future__ import annotations

import json
from pathlib import Path

from .search import LayerProfile, Policy
from .space import Option

FORMAT = "hwcomp-policy/1"


def save_policy(policy: Policy, path: str | Path, target: str, profiles: list[LayerProfile] | None = None) -> None:
    data = {
        "format": FORMAT, "target": target,
        "predicted": {"latency_ms": policy.predicted_latency_ms, "cosine": policy.predicted_cosine},
        "simulated": {"cosine": policy.simulated_cosine},
        "measured": {"latency_ms": policy.measured_latency_ms, "cosine": policy.measured_cosine},
        "layers": {name: opt.to_dict() for name, opt in policy.choices.items()},
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    if profiles is not None:
        Path(path).with_suffix(".txt").write_text(policy_table(policy, profiles) + "\n")


def load_policy(path: str | Path) -> Policy:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an hwcomp policy file (format {data.get('format')!r})")
    pol = Policy({k: Option.from_dict(v) for k, v in data["layers"].items()},
                 data["predicted"]["latency_ms"], 1.0 - data["predicted"]["cosine"])
    pol.measured_latency_ms = data["measured"]["latency_ms"]
    pol.measured_cosine = data["measured"]["cosine"]
    pol.simulated_cosine = data.get("simulated", {}).get("cosine")
    return pol


def policy_table(policy: Policy, profiles: list[LayerProfile]) -> str:
    rows = [("layer", "shape", "choice", "latency ms", "dense ms", "error (1-cos)")]
    for p in profiles:
        c = p.cost_of(policy.choices)
        label = " + ".join(o.label for o in p.choices_of(c).values())
        rows.append((p.name, "x".join(map(str, p.shape)), label, f"{c.latency_ms:.3f}",
                     f"{p.dense().latency_ms:.3f}", f"{c.error:.2e}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append(f"predicted: {policy.predicted_latency_ms:.3f} ms, cosine {policy.predicted_cosine:.5f} (additive)"
                 + (f", {policy.simulated_cosine:.5f} (simulated)" if policy.simulated_cosine is not None else "")
                 + (f"; measured: {policy.measured_latency_ms:.3f} ms, cosine {policy.measured_cosine:.5f}"
                    if policy.measured_latency_ms is not None else ""))
    return "\n".join(lines)
