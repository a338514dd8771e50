"""Records measured on another CPU are timed against the default schedule here before compile serves
them (hwcomp.tune.retime): a planted slow record (a one-thread loop nest recorded at 1 ns, as a record
tuned for a very different CPU might behave here) loses and is left out; the verdict is kept per CPU
and reused; records this CPU measured are served as they are; the source database is never changed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from db_helpers import Tiny
from tvm import s_tir

import hwcomp
from hwcomp.api import CompileOptions
from hwcomp.records.formats import workload_stats
from hwcomp.records.locations import RECORDS, WORKLOADS, this_cpu
from hwcomp.records.store import note_cpus, read_meta, tuned_on, write_meta
from hwcomp.records.validate import open_database
from hwcomp.tune.knobs import commit_schedule, default_knobs, kernel_for, schedule_with
from hwcomp.tune.retime import local_measure, records_for_this_cpu
from hwcomp.tune.tasks import extract_tasks, lower_for_tuning

OTHER_CPU = "Some Other CPU × 64"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(16, 128)
    path = tmp_path_factory.mktemp("retime") / "tiny.pt2"
    torch.export.save(torch.export.export(m, (x,)), str(path))
    return path, m, x


@pytest.fixture(scope="module")
def lowered(model, host):
    return lower_for_tuning(model[0], host)


def _slow_schedule(task):
    """fc1 on one thread with the reduction loop outermost: ~40x slower than the default here (a
    schedule with a trace: MetaSchedule never serves a record whose trace is empty)."""
    sch = s_tir.Schedule(task.mod)
    loops = sch.get_loops(sch.get_sblock("dense_packed"))
    sch.reorder(loops[-1], *loops[:-1])
    return sch


def _planted_db(directory, lowered, host, cpus):
    """A database whose one record is :func:`_slow_schedule`, recorded at 1 ns."""
    task = max(extract_tasks(lowered, host), key=lambda t: t.flop)
    write_meta(directory, host)
    commit_schedule(open_database(directory, host, validate=False), task, _slow_schedule(task), 1e-9, host)
    note_cpus(directory, cpus)
    return task


def _refuse(mods):
    raise AssertionError(f"measured {len(mods)} module(s); the verdicts should have come from the cache")


def test_slow_record_from_another_cpu_loses_and_is_left_out(model, lowered, host, tmp_path):
    path, m, x = model
    db = tmp_path / "db"
    task = _planted_db(db, lowered, host, [OTHER_CPU])
    before = {n: (db / n).read_bytes() for n in (WORKLOADS, RECORDS)}

    logs: list[str] = []
    art = hwcomp.compile(path, host, tmp_path / "out", options=CompileOptions(database=db), log=logs.append)
    text = "\n".join(logs)
    print(text)
    assert f"measured on {OTHER_CPU}" in text and "re-timing 1 tuned schedule" in text
    verdict = next(ln for ln in logs if ln.strip().startswith(task.name + ":"))
    assert verdict.endswith("→ default"), verdict
    with torch.no_grad():
        want = m(x).numpy()
    got = art.run({"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # The verdict is cached: the next compile measures nothing and opens a copy without the record.
    served = records_for_this_cpu(lowered, host, db, measure=_refuse)
    assert served != db
    assert task.key not in workload_stats(served)
    assert workload_stats(db)[task.key].trials == 1
    assert {n: (db / n).read_bytes() for n in (WORKLOADS, RECORDS)} == before, "the source database changed"


def test_a_changed_record_is_timed_again(model, lowered, host, tmp_path):
    db = tmp_path / "db"
    task = _planted_db(db, lowered, host, [OTHER_CPU])
    calls = []
    timing = local_measure(host)

    def counting(mods):
        calls.append(len(mods))
        return timing(mods)

    records_for_this_cpu(lowered, host, db, measure=counting)
    records_for_this_cpu(lowered, host, db, measure=counting)
    assert calls == [2]  # record and default, once
    # a new best record for the same workload (hwcomp's tiled kernel, row tiles outermost so that its
    # trace holds all of it): what the database serves changed, so the old verdict does not apply
    sch = schedule_with(task.func, dataclasses.replace(default_knobs(kernel_for(task.func, host)), panel_outer=False),
                        host)
    commit_schedule(open_database(db, host, validate=False), task, sch, 1e-10, host)
    records_for_this_cpu(lowered, host, db, measure=counting)
    assert calls == [2, 2]


def test_records_measured_on_this_cpu_are_served_as_they_are(lowered, host, tmp_path):
    db = tmp_path / "db"
    _planted_db(db, lowered, host, [this_cpu()])
    assert tuned_on(db) == [this_cpu()]
    assert records_for_this_cpu(lowered, host, db, measure=_refuse) == db


def test_compile_can_be_told_to_trust_records(model, lowered, host, tmp_path):
    db = tmp_path / "db"
    _planted_db(db, lowered, host, [OTHER_CPU])
    logs: list[str] = []
    hwcomp.compile(model[0], host, tmp_path / "out", options=CompileOptions(database=db, retime_records=False),
                   log=logs.append)
    assert not any("re-timing" in ln for ln in logs)


def test_cpus_are_noted_on_import(tmp_path, host):
    from hwcomp.tune.database import import_database
    from tests.db_helpers import fill

    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, host)
    assert "cpus" not in read_meta(src) and tuned_on(src) == ["unknown"]
    import_database(src, dest, host)
    assert tuned_on(dest) == ["unknown"]
    note_cpus(src, ["A × 2"])
    note_cpus(dest, [this_cpu()])
    assert read_meta(dest)["cpus"] == ["unknown", this_cpu()]
    json.loads((dest / "hwcomp_db.json").read_text())  # still valid JSON
