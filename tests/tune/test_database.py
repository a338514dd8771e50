"""Tuning databases without measuring: validation of corrupt/foreign lines, incremental checks,
export/import/merge with re-targeting, and which records ``host`` uses. Records are made from
hwcomp's TiledReduction schedules with made-up times (nothing is built), so these tests are fast."""

from __future__ import annotations

import json
import tarfile
import warnings

import pytest
import tvm
import tvm_ffi
from tvm import te
from tvm.s_tir import meta_schedule as ms

from hwcomp.target import get_target
from hwcomp.tune import database as dbm
from hwcomp.tune.cli import parse_duration
from hwcomp.tune.knobs import knob_space, schedule_with
from hwcomp.tune.tasks import workload_key

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}


def _matmul(m, k, n):
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="matmul")
    func = te.create_prim_func([a, b, c])
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def _fill(directory, target, shapes=((16, 32, 64), (8, 64, 32)), per_workload=3):
    """A real JSON database: TiledReduction traces as records, times 1e-5 · (i + 1)."""
    db = dbm.open_database(directory, target, validate=False)
    dbm.write_meta(directory, target)
    mods = []
    for shape in shapes:
        mod = _matmul(*shape)
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


def _lines(path):
    return path.read_text().splitlines()


@pytest.fixture
def host_db(tmp_path, host):
    d = tmp_path / "db"
    mods = _fill(d, host)
    return d, mods


def test_signature_host_matches_x86_avx2_on_avx2_machines(host):
    assert dbm.target_signature(AARCH64) == "llvm/aarch64/neon"
    assert dbm.target_signature(get_target("x86-avx2")) == "llvm/x86_64/avx2"
    assert dbm.target_signature(get_target("x86-avx512")) == "llvm/x86_64/avx512"
    if host.arch == "x86_64" and host.vector_bits == 256:
        assert dbm.target_signature(host) == dbm.target_signature(get_target("x86-avx2"))


def test_metaschedule_lookup_ignores_the_target(host_db):
    """Why hwcomp filters records by target itself (and why host can use x86-avx2's records)."""
    d, mods = host_db
    db = dbm.open_database(d)
    other = tvm.target.Target(AARCH64)
    rec = db.query_tuning_record(mods[0], other, "main")
    assert rec is not None and abs(float(rec.run_secs[0]) - 1e-5) < 1e-9


def test_corrupt_and_foreign_lines_are_skipped_with_a_warning(host_db):
    d, mods = host_db
    rec_path = d / dbm.RECORDS
    good = _lines(rec_path)
    assert len(good) == 6
    bad = list(good)
    truncated = good[1][: len(good[1]) // 2]
    wrong_index = json.dumps([7, json.loads(good[2])[1]])
    foreign = json.loads(good[3])
    foreign[1][2] = AARCH64
    wrong_workload = json.loads(good[4])
    wrong_workload[0] = 1 - wrong_workload[0]  # the other matmul: arguments do not match
    bad = [good[0], truncated, wrong_index, json.dumps(foreign), json.dumps(wrong_workload), good[5], good[2][:40]]
    original = "\n".join(bad)  # no final newline: a tuner killed mid-line
    rec_path.write_text(original)

    with pytest.warns(dbm.TuningDatabaseWarning) as caught:
        report = dbm.validate_database(d)
    messages = [str(w.message) for w in caught]
    for line, why in [(2, "truncated or invalid JSON"), (3, "workload #7, which does not exist"),
                      (4, "another target"), (5, "does not belong to workload"), (7, "truncated")]:
        assert any(f"{dbm.RECORDS}:{line}:" in m and why in m for m in messages), (line, messages)
    assert report.records == 2 and len(report.issues) == 5
    assert _lines(rec_path) == [good[0], good[5]]  # nothing valid lost, order kept
    bak = d / (dbm.RECORDS + ".bak")
    assert bak.read_text() == original
    db = dbm.open_database(d)  # MetaSchedule loads the cleaned copy
    assert len(db) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dbm.validate_database(d).ok  # clean now, and checked incrementally
        assert dbm.validate_database(d).checked_lines == 0


def test_duplicate_and_corrupt_workloads_are_renumbered(host_db):
    d, _ = host_db
    wl_path, rec_path = d / dbm.WORKLOADS, d / dbm.RECORDS
    wls = _lines(wl_path)
    recs = _lines(rec_path)
    # A corrupt first workload line and a duplicate: indices of the records must be remapped.
    wl_path.write_text("\n".join(["[\"123\", \"not base64", wls[0], wls[1], wls[0]]) + "\n")
    shifted = [json.dumps([json.loads(r)[0] + 1, json.loads(r)[1]]) for r in recs]
    shifted.append(json.dumps([3, json.loads(recs[0])[1]]))  # refers to the duplicate
    rec_path.write_text("\n".join(shifted) + "\n")
    with pytest.warns(dbm.TuningDatabaseWarning):
        report = dbm.validate_database(d)
    assert report.workloads == 2 and report.records == 7
    assert _lines(wl_path) == wls
    assert [json.loads(r)[0] for r in _lines(rec_path)] == [0, 0, 0, 1, 1, 1, 0]
    assert len(dbm.open_database(d)) == 7


def test_export_import_merge_and_retarget(tmp_path, host_db, host):
    d, mods = host_db
    out = dbm.export_database(d, tmp_path / "best.tar.gz", top_k=1)
    with tarfile.open(out) as tar:
        names = sorted(m.name for m in tar.getmembers())
    assert "records/database_tuning_record.json" in names

    avx2 = get_target("x86-avx2")
    if dbm.target_signature(host) != dbm.target_signature(avx2):
        pytest.skip("host is not an AVX2 machine: its records are foreign to x86-avx2")
    dest = tmp_path / "avx2"
    rep = dbm.import_database(out, dest, avx2)
    assert (rep.records_added, rep.workloads_added) == (2, 2)
    targets = {json.loads(line)[1][2]["mcpu"] for line in _lines(dest / dbm.RECORDS)}
    assert targets == {"haswell"}  # re-targeted to the destination
    again = dbm.import_database(d, dest, avx2)
    assert again.records_added == 4 and again.duplicates == 2
    assert len(dbm.open_database(dest, avx2)) == 6

    arm_dir = tmp_path / "arm"
    _fill(arm_dir, get_target("rpi4"), shapes=((16, 32, 64),), per_workload=2)
    merged = tmp_path / "merged"
    reps = dbm.merge_databases([dest, arm_dir], merged, avx2)
    assert reps[0].records_added == 6 and reps[1].foreign == 2 and reps[1].records_added == 0
    stats = dbm.workload_stats(merged)
    assert stats[workload_key(mods[0])].best_secs == pytest.approx(1e-5, rel=1e-3)


def test_measured_latencies_travel_with_the_records(tmp_path, host_db, host):
    """BSR choices and policy latencies are exported, imported and merged; the destination's entry
    wins a conflict, a corrupt source file is reported and skipped, another target's are foreign."""
    d, _ = host_db
    (d / dbm.BSR_CHOICES).write_text(json.dumps({"dense:8x64x32": {"ms": 0.5}, "bsr:8x64x32:8x1:d0.10": {"ms": 0.1}}))
    (d / dbm.POLICY_LATENCY).write_text('{"key": "a", "ms": 1.0}\n{"key": "b", "ms": 2.0}\n{"key": "c", "ms"\n')
    out = dbm.export_database(d, tmp_path / "all.tar.gz")
    with tarfile.open(out) as tar:
        names = {m.name for m in tar.getmembers()}
    assert {f"records/{dbm.BSR_CHOICES}", f"records/{dbm.POLICY_LATENCY}"} <= names

    assert dbm.import_database(out, tmp_path / "fresh", host).measurements_added == 4  # the torn line dropped

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / dbm.BSR_CHOICES).write_text(json.dumps({"dense:8x64x32": {"ms": 0.7}}))
    rep = dbm.import_database(d, dest, host)
    assert rep.measurements_added == 3 and rep.skipped_bad == 1  # the torn policy line
    assert json.loads((dest / dbm.BSR_CHOICES).read_text()) == {
        "dense:8x64x32": {"ms": 0.7}, "bsr:8x64x32:8x1:d0.10": {"ms": 0.1}}
    assert [json.loads(t)["key"] for t in _lines(dest / dbm.POLICY_LATENCY)] == ["a", "b"]
    assert dbm.import_database(out, dest, host).measurements_added == 0

    (d / dbm.BSR_CHOICES).write_text("{torn")
    with pytest.warns(dbm.TuningDatabaseWarning, match="corrupt measurement file"):
        rep = dbm.import_database(d, dest, host)
    assert rep.skipped_bad >= 1 and "bsr:8x64x32:8x1:d0.10" in json.loads((dest / dbm.BSR_CHOICES).read_text())

    arm_dir = tmp_path / "arm"
    _fill(arm_dir, get_target("rpi4"), shapes=((16, 32, 64),), per_workload=1)
    (arm_dir / dbm.BSR_CHOICES).write_text(json.dumps({"dense:1x2x3": {"ms": 9.0}}))
    rep = dbm.import_database(arm_dir, dest, host)
    assert rep.measurements_added == 0 and rep.foreign >= 2
    assert "dense:1x2x3" not in json.loads((dest / dbm.BSR_CHOICES).read_text())


def test_host_compiles_with_compatible_shipped_records(tmp_path, monkeypatch, host):
    avx2 = get_target("x86-avx2")
    monkeypatch.setenv("HWCOMP_CACHE", str(tmp_path / "empty-cache"))
    shipped = dbm.shipped_database_dir(avx2)
    if shipped is None or not dbm.has_records(shipped):
        pytest.skip("no shipped x86-avx2 records in this checkout")
    assert dbm.default_database_dir(avx2) == shipped
    if dbm.target_signature(host) == dbm.target_signature(avx2):
        assert dbm.default_database_dir(host) == shipped
    # A user database for the target wins once it has records.
    _fill(dbm.user_database_dir(host), host, shapes=((4, 8, 8),), per_workload=1)
    assert dbm.default_database_dir(host) == dbm.user_database_dir(host)


def test_parse_duration():
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    with pytest.raises(Exception, match="bad duration"):
        parse_duration("soon")


def test_db_cli_check_export_import(tmp_path, host_db, host, capsys):
    import argparse

    from hwcomp.tune.cli import add_db_arguments, add_tune_arguments, run_db

    d, _ = host_db
    (d / dbm.RECORDS).write_text((d / dbm.RECORDS).read_text() + "[0, [\"trunc")

    def db(*argv):
        p = argparse.ArgumentParser()
        add_db_arguments(p)
        return run_db(p.parse_args(list(argv)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dbm.TuningDatabaseWarning)
        assert db("check", "--db", str(d), "--dry-run") == 1
        assert "skipped" in capsys.readouterr().out
        assert db("check", "--db", str(d)) == 1  # rewrites
        assert db("check", "--db", str(d)) == 0
        assert db("show", "--db", str(d)) == 0
        assert "6 records" in capsys.readouterr().out
        assert db("export", "--db", str(d), "-o", str(tmp_path / "x.tar.gz"), "--top-k", "2") == 0
        assert db("import", str(tmp_path / "x.tar.gz"), "--db", str(tmp_path / "imp"), "-t", "host") == 0
    assert len(dbm.open_database(tmp_path / "imp")) == 4

    p = argparse.ArgumentParser()
    add_tune_arguments(p)
    a = p.parse_args(["m.pt2", "-t", "x86-avx2", "--trials", "32", "--time-budget", "30m",
                      "--rpc-tracker", "127.0.0.1:9190", "--rpc-key", "x86-avx2"])
    assert (a.trials, a.time_budget, a.rpc_tracker, a.rpc_key, a.method) == (32, "30m", "127.0.0.1:9190",
                                                                             "x86-avx2", "metaschedule")


def test_select_workloads_keeps_only_the_chosen_ones(tmp_path, host_db, host):
    """What the shipped-record tuner uses to take some models' workloads from another database."""
    d, mods = host_db
    keep = workload_key(mods[1])
    n = dbm.select_workloads(d, tmp_path / "sel", lambda k: k == keep)
    assert n == 3
    stats = dbm.workload_stats(tmp_path / "sel")
    assert list(stats) == [keep] and stats[keep].trials == 3
    assert dbm.validate_database(tmp_path / "sel", host).ok  # indices renumbered, every line valid
    assert dbm.select_workloads(d, tmp_path / "none", lambda k: False) == 0
