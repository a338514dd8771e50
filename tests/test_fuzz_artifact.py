"""Fuzzing the artifact readers: manifests, archives and the arrays inside an artifact.

Property: whatever the bytes, loading gives an :class:`ArtifactError` (one clear line) or a valid
artifact — never another exception, and nothing is written outside the place it extracts to.
"""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hwcomp
from hwcomp.artifact import MANIFEST, REFERENCE, WEIGHTS, Artifact, sha256
from hwcomp.errors import ArtifactError

CASES = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "lin"
    hwcomp.compile(torch.nn.Linear(8, 4).eval(), "host", out, example_inputs=(torch.randn(2, 8),))
    return out


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
names = st.one_of(st.sampled_from(["model.so", "weights.npz", "reference.npz", "../../../../etc/passwd",
                                   "/etc/passwd", "..", ".", "", "a/b", "manifest.json", "x\x00y"]),
                  st.text(max_size=12))


def _mutate(manifest: dict, data) -> dict:
    """One to three random edits of a valid manifest: drop, replace or add a field at any depth."""
    m = json.loads(json.dumps(manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        path = [m]
        node = m
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            path.append(key)
            node = node[key]
        parent = m
        for k in path[1:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["drop", "replace", "add_file"]))
        if action == "add_file":
            m.setdefault("files", {})
            if isinstance(m["files"], dict):
                m["files"][data.draw(names)] = data.draw(st.one_of(st.text(max_size=64), st.just("0" * 64)))
        elif len(path) > 1:
            key = path[-1]
            if action == "drop" and isinstance(parent, dict):
                parent.pop(key, None)
            elif action == "replace" or isinstance(parent, list):
                parent[key] = data.draw(json_value)
    return m


@CASES
@given(data=st.data())
def test_fuzzed_manifests_load_or_fail_cleanly(base, tmp_path_factory, data):
    art = tmp_path_factory.mktemp("m", numbered=True) / "a"
    shutil.copytree(base, art)
    manifest = json.loads((art / MANIFEST).read_text())
    mode = data.draw(st.sampled_from(["mutate", "garbage", "json"]))
    if mode == "mutate":
        (art / MANIFEST).write_text(json.dumps(_mutate(manifest, data)))
    elif mode == "json":
        (art / MANIFEST).write_text(json.dumps(data.draw(json_value)))
    else:
        (art / MANIFEST).write_bytes(data.draw(st.binary(max_size=200)))
    try:
        loaded = Artifact.load(art)
        loaded.reference(), loaded.weights(), loaded.inputs, loaded.outputs, loaded.target["arch"]
    except ArtifactError as e:
        assert "\n" not in str(e)
    finally:
        shutil.rmtree(art.parent, ignore_errors=True)


@CASES
@given(data=st.data())
def test_fuzzed_arrays_inside_an_artifact_fail_cleanly(base, tmp_path_factory, data):
    """A reference or weights file whose hash was fixed after it was replaced by other bytes."""
    art = tmp_path_factory.mktemp("n", numbered=True) / "a"
    shutil.copytree(base, art)
    name = data.draw(st.sampled_from([REFERENCE, WEIGHTS]))
    original = (art / name).read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "random", "flip"]))
    if kind == "truncate":
        blob = original[: data.draw(st.integers(0, len(original)))]
    elif kind == "random":
        blob = data.draw(st.binary(max_size=400))
    else:
        i = data.draw(st.integers(0, len(original) - 1))
        blob = original[:i] + bytes([original[i] ^ 0xFF]) + original[i + 1:]
    (art / name).write_bytes(blob)
    m = json.loads((art / MANIFEST).read_text())
    m["files"][name], m["sizes"][name] = sha256(art / name), len(blob)
    (art / MANIFEST).write_text(json.dumps(m))
    try:
        loaded = Artifact.load(art)
        loaded.reference()
        loaded.weights()
    except ArtifactError as e:
        assert "\n" not in str(e)
    finally:
        shutil.rmtree(art.parent, ignore_errors=True)


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@CASES
@given(data=st.data())
def test_fuzzed_archives_load_or_fail_cleanly_and_write_nothing_outside(base, tmp_path_factory, data):
    work = tmp_path_factory.mktemp("z", numbered=True)
    real = {p.name: p.read_bytes() for p in base.iterdir()}
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, blob in real.items():
        if data.draw(st.integers(0, 9)) == 0:
            continue  # drop a member
        info = tarfile.TarInfo(f"lin/{name}")
        info.size = len(blob)
        members.append((info, blob))
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                          tarfile.FIFOTYPE]))
        info = tarfile.TarInfo(data.draw(st.one_of(names, names.map(lambda n: "lin/" + n))) or "x")
        info.type = kind
        blob = data.draw(st.binary(max_size=64)) if kind == tarfile.REGTYPE else None
        if blob is not None:
            info.size = len(blob)
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = data.draw(names) or "/etc/passwd"
        members.insert(data.draw(st.integers(0, len(members))), (info, blob))
    raw = _tar_bytes(members)
    if data.draw(st.integers(0, 4)) == 0:
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    archive = work / "a.tar.gz"
    archive.write_bytes(raw)
    before = sorted(p.name for p in work.iterdir())
    try:
        Artifact.load(archive, max_archive_bytes=8 << 20)
    except ArtifactError as e:
        assert "\n" not in str(e)
    assert sorted(p.name for p in work.iterdir()) == before
    shutil.rmtree(work, ignore_errors=True)
