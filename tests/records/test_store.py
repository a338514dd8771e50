"""The keyed measurement store (BSR choices: one JSON object; policy latencies: JSON lines), the
atomic writer and the file lock."""

from __future__ import annotations

import json
import os
import threading

import pytest

from hwcomp.records.locations import BSR_CHOICES, POLICY_LATENCY
from hwcomp.records.store import MeasurementStore, atomic_write, locked


def test_one_object_store_round_trip_and_corrupt_file_set_aside(tmp_path):
    store = MeasurementStore(tmp_path / "db" / BSR_CHOICES)
    assert store.load() == {} and store.get("dense:1x2x3") is None
    store.put("dense:1x2x3", {"ms": 1.0})
    store.put("bsr:1x2x3:8x1:d0.10", {"ms": 0.5, "knobs": None})
    assert json.loads(store.path.read_text()) == {"dense:1x2x3": {"ms": 1.0},
                                                  "bsr:1x2x3:8x1:d0.10": {"ms": 0.5, "knobs": None}}
    assert store.add({"dense:1x2x3": {"ms": 9.0}, "dense:4x5x6": {"ms": 2.0}}) == 1  # existing entry wins
    assert store.get("dense:1x2x3") == {"ms": 1.0} and store.get("dense:4x5x6") == {"ms": 2.0}
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]

    store.path.write_text('{"dense:1x2x3": {"ms": 1.0')
    with pytest.raises(ValueError):
        store.read()
    with pytest.warns(UserWarning, match="corrupt BSR choices"):
        assert store.load() == {}
    assert (store.path.parent / (BSR_CHOICES + ".corrupt")).read_text() == '{"dense:1x2x3": {"ms": 1.0'


def test_json_lines_store_appends_and_skips_torn_lines(tmp_path):
    store = MeasurementStore(tmp_path / POLICY_LATENCY)
    store.put("a", {"key": "a", "ms": 1.0})
    store.put("b", {"ms": 2.0})  # the key is written into the entry
    with open(store.path, "a") as f:
        f.write('{"key": "c", "ms"')  # a writer killed mid-line
    entries, bad = store.read()
    assert entries == {"a": {"key": "a", "ms": 1.0}, "b": {"key": "b", "ms": 2.0}} and bad == 1
    store.put("e", {"ms": 4.0})  # starts on a line of its own
    assert store.read() == ({**entries, "e": {"key": "e", "ms": 4.0}}, 1)
    store.put("a", {"ms": 0.5})  # a later line of a key wins
    assert store.get("a")["ms"] == 0.5
    assert store.add({"a": {"ms": 7.0}, "d": {"ms": 3.0}}) == 1


def test_concurrent_puts_lose_nothing(tmp_path):
    store = MeasurementStore(tmp_path / BSR_CHOICES)
    threads = [threading.Thread(target=lambda i=i: [store.put(f"k{i}.{j}", {"ms": j}) for j in range(10)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load()) == 40


def test_atomic_write_keeps_permissions_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.json"
    atomic_write(p, "one\n")
    p.chmod(0o640)
    atomic_write(p, "two\n")
    assert p.read_text() == "two\n" and (p.stat().st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["f.json"]


def test_lock_is_exclusive(tmp_path):
    order = []
    with locked(tmp_path):
        def other():
            with locked(tmp_path):
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        t.join(0.3)
        order.append("first")
    t.join(5)
    assert order == ["first", "other"]
