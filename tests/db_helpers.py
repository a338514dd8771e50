"""Tuning databases made without measuring, for tests/records and tests/tune: real MetaSchedule JSON
databases whose records are hwcomp's TiledReduction traces with made-up times (nothing is built)."""

from __future__ import annotations

import torch
import tvm
import tvm_ffi
from tvm import te
from tvm.s_tir import meta_schedule as ms

from hwcomp.records.store import write_meta
from hwcomp.records.validate import open_database
from hwcomp.tune.knobs import knob_space, schedule_with

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}


def matmul(m, k, n):
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="matmul")
    func = te.create_prim_func([a, b, c])
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def fill(directory, target, shapes=((16, 32, 64), (8, 64, 32)), per_workload=3):
    """A real JSON database: TiledReduction traces as records, times 1e-5 · (i + 1)."""
    db = open_database(directory, target, validate=False)
    write_meta(directory, target)
    mods = []
    for shape in shapes:
        mod = matmul(*shape)
        mods.append(mod)
        wl = db.commit_workload(mod)
        n = 0
        seen = set()
        for knobs in knob_space():
            sch = schedule_with(mod["main"], knobs, target)
            if sch is None or tvm_ffi.structural_hash(sch.mod) in seen:
                continue
            seen.add(tvm_ffi.structural_hash(sch.mod))
            db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, wl, [tvm.tirx.FloatImm("float32", 1e-5 * (n + 1))], target.tvm_target(),
                ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
            n += 1
            if n == per_workload:
                break
    return mods


def lines(path):
    return path.read_text().splitlines()


class Tiny(torch.nn.Module):
    """Two Linears and a ReLU: the model the tuning tests tune and compile (16 x 128 input)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(128, 256)
        self.fc2 = torch.nn.Linear(256, 64)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
