"""Validation before MetaSchedule opens a database: corrupt, dangling and foreign lines are skipped
with a warning naming file and line, duplicates merged, and the check is incremental; the shipped
records load as they are."""

from __future__ import annotations

import json
import warnings

import pytest
import tvm
from db_helpers import AARCH64, fill, lines

from hwcomp.records.locations import RECORDS, WORKLOADS, shipped_database_dir
from hwcomp.records.store import TuningDatabaseWarning
from hwcomp.records.validate import open_database, validate_database
from hwcomp.target import get_target


@pytest.fixture
def host_db(tmp_path, host):
    d = tmp_path / "db"
    mods = fill(d, host)
    return d, mods


def test_metaschedule_lookup_ignores_the_target(host_db):
    """Why hwcomp filters records by target itself (and why host can use x86-avx2's records)."""
    d, mods = host_db
    db = open_database(d)
    other = tvm.target.Target(AARCH64)
    rec = db.query_tuning_record(mods[0], other, "main")
    assert rec is not None and abs(float(rec.run_secs[0]) - 1e-5) < 1e-9


def test_corrupt_and_foreign_lines_are_skipped_with_a_warning(host_db):
    d, _ = host_db
    rec_path = d / RECORDS
    good = lines(rec_path)
    assert len(good) == 6
    truncated = good[1][: len(good[1]) // 2]
    wrong_index = json.dumps([7, json.loads(good[2])[1]])
    foreign = json.loads(good[3])
    foreign[1][2] = AARCH64
    wrong_workload = json.loads(good[4])
    wrong_workload[0] = 1 - wrong_workload[0]  # the other matmul: arguments do not match
    bad = [good[0], truncated, wrong_index, json.dumps(foreign), json.dumps(wrong_workload), good[5], good[2][:40]]
    original = "\n".join(bad)  # no final newline: a tuner killed mid-line
    rec_path.write_text(original)

    with pytest.warns(TuningDatabaseWarning) as caught:
        report = validate_database(d)
    messages = [str(w.message) for w in caught]
    for line, why in [(2, "truncated or invalid JSON"), (3, "workload #7, which does not exist"),
                      (4, "another target"), (5, "does not belong to workload"), (7, "truncated")]:
        assert any(f"{RECORDS}:{line}:" in m and why in m for m in messages), (line, messages)
    assert report.records == 2 and len(report.issues) == 5
    assert lines(rec_path) == [good[0], good[5]]  # nothing valid lost, order kept
    bak = d / (RECORDS + ".bak")
    assert bak.read_text() == original
    db = open_database(d)  # MetaSchedule loads the cleaned copy
    assert len(db) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_database(d).ok  # clean now, and checked incrementally
        assert validate_database(d).checked_lines == 0


def test_duplicate_and_corrupt_workloads_are_renumbered(host_db):
    d, _ = host_db
    wl_path, rec_path = d / WORKLOADS, d / RECORDS
    wls = lines(wl_path)
    recs = lines(rec_path)
    # A corrupt first workload line and a duplicate: indices of the records must be remapped.
    wl_path.write_text("\n".join(["[\"123\", \"not base64", wls[0], wls[1], wls[0]]) + "\n")
    shifted = [json.dumps([json.loads(r)[0] + 1, json.loads(r)[1]]) for r in recs]
    shifted.append(json.dumps([3, json.loads(recs[0])[1]]))  # refers to the duplicate
    rec_path.write_text("\n".join(shifted) + "\n")
    with pytest.warns(TuningDatabaseWarning):
        report = validate_database(d)
    assert report.workloads == 2 and report.records == 7
    assert lines(wl_path) == wls
    assert [json.loads(r)[0] for r in lines(rec_path)] == [0, 0, 0, 1, 1, 1, 0]
    assert len(open_database(d)) == 7


def test_shipped_records_validate_clean(tmp_path, monkeypatch):
    """The records shipped in schedules/x86_avx2/records/ load without a skipped line (and are not
    rewritten: an installed package's directory is read-only)."""
    monkeypatch.setenv("HWCOMP_CACHE", str(tmp_path / "cache"))
    avx2 = get_target("x86-avx2")
    shipped = shipped_database_dir(avx2)
    if shipped is None:
        pytest.skip("no shipped x86-avx2 records in this checkout")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningDatabaseWarning)
        report = validate_database(shipped, avx2, rewrite=False)
    assert report.ok and report.records > 0 and report.workloads > 0
