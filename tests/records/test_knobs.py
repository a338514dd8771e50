"""Knob records: reading ``hwcomp_knobs.json`` (bad and foreign lines skipped), the best knobs per
workload, and the build rule that applies them to the matching PrimFunc."""

from __future__ import annotations

import json

from db_helpers import matmul

from hwcomp.records.formats import workload_key
from hwcomp.records.knobs import (
    append_knob_entry,
    best_knobs,
    knob_types,
    read_knob_entries,
    stored_knob_rules,
)
from hwcomp.records.locations import KNOBS, target_signature


def test_best_stored_knobs_are_applied_to_their_workload(tmp_path, host):
    mod = matmul(16, 32, 64)
    key = workload_key(mod)
    assert key == workload_key(mod["main"].with_attr("global_symbol", "main"))  # PrimFunc or module: one hash
    TileKnobs = knob_types()
    slow, fast = TileKnobs(mr=1, nr_vectors=1), TileKnobs(mr=2, nr_vectors=2)
    sig = target_signature(host)
    append_knob_entry(tmp_path, key, "matmul", slow, [2e-5, 2e-5], None, sig)
    append_knob_entry(tmp_path, key, "matmul", fast, [1e-5], None, sig)
    append_knob_entry(tmp_path, key, "matmul", TileKnobs(mr=4), [1e10], "run: failed", sig)
    append_knob_entry(tmp_path, key, "matmul", TileKnobs(mr=8), [1e-9], None, "llvm/aarch64/neon")  # foreign
    with open(tmp_path / KNOBS, "a") as f:
        f.write('{"workload": "1", "kernel"\n')
    first = json.loads((tmp_path / KNOBS).read_text().splitlines()[0])
    assert set(first) == {"workload", "task", "kernel", "knobs", "run_secs", "error", "signature", "time"}

    entries = read_knob_entries(tmp_path, host)
    assert [e.secs for e in entries] == [2e-5, 1e-5, None]
    best = best_knobs(tmp_path, host)
    assert list(best) == [key] and best[key].knobs == fast

    rules = stored_knob_rules(tmp_path, host)
    assert len(rules) == 1
    sch = rules[0].apply(mod["main"], host.tvm_target(), False)
    assert sch is not None
    assert rules[0].apply(matmul(8, 8, 8)["main"], host.tvm_target(), False) is None  # no stored knobs
    assert stored_knob_rules(None, host) == [] and stored_knob_rules(tmp_path / "none", host) == []
