"""Artifacts under bad input: nothing of the user's is replaced, nothing outside the artifact is read,
nothing unverified is loaded, and many threads can run one artifact. Real compiles, real runs."""

import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp.api import CompileOptions
from hwcomp.artifact import LIB, MANIFEST, REFERENCE, Artifact, sha256
from hwcomp.errors import ArtifactError, HwcompError


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


EXAMPLE = (torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("built") / "mlp"
    hwcomp.compile(TinyMLP().eval(), "host", out, example_inputs=EXAMPLE)
    return out


def copy_of(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(built, dst)
    return dst


def edit_manifest(path: Path, change) -> None:
    m = json.loads((path / MANIFEST).read_text())
    change(m)
    (path / MANIFEST).write_text(json.dumps(m))


# ---- the output directory -------------------------------------------------------------------------


def test_compile_refuses_a_folder_with_user_files_and_keeps_them(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    with pytest.raises(ArtifactError, match="thesis.txt"):
        hwcomp.compile(TinyMLP().eval(), "host", d, example_inputs=EXAMPLE)
    assert (d / "thesis.txt").read_text() == "years of work"


def test_compile_refuses_the_working_directory_even_with_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    for force in (False, True):
        with pytest.raises(ArtifactError):
            hwcomp.compile(TinyMLP().eval(), "host", ".", example_inputs=EXAMPLE,
                           options=CompileOptions(force=force))
        with pytest.raises(ArtifactError):
            hwcomp.compile(TinyMLP().eval(), "host", tmp_path.parent, example_inputs=EXAMPLE,
                           options=CompileOptions(force=force))
    assert (tmp_path / "notes.txt").exists()


def test_compile_replaces_an_artifact_atomically_and_force_replaces_other_folders(tmp_path, built):
    out = copy_of(built, tmp_path)
    art = hwcomp.compile(TinyMLP().eval(), "host", out, example_inputs=EXAMPLE)
    assert art.fidelity["min_cosine"] > 0.9999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary sibling left
    other = tmp_path / "other"
    other.mkdir()
    (other / "old.txt").write_text("x")
    art = hwcomp.compile(TinyMLP().eval(), "host", other, example_inputs=EXAMPLE,
                         options=CompileOptions(force=True))
    assert not (other / "old.txt").exists() and (other / LIB).is_file()


def test_a_failed_compile_keeps_the_previous_artifact(tmp_path, built):
    out = copy_of(built, tmp_path)
    before = sha256(out / MANIFEST)

    def broken_pass(mod):
        raise RuntimeError("pass failed")

    with pytest.raises(RuntimeError, match="pass failed"):
        hwcomp.compile(TinyMLP().eval(), "host", out, example_inputs=EXAMPLE,
                       options=CompileOptions(passes=[broken_pass]))
    assert sha256(out / MANIFEST) == before
    Artifact.load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


# ---- the manifest and its files -------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    (lambda m: m["files"].update({"../../../../etc/passwd": "0" * 64}), "etc/passwd"),
    (lambda m: m.update(files=list(m["files"])), "'files' must be"),
    (lambda m: m.pop("target"), "'target'"),
    (lambda m: m.pop("inputs"), "'inputs'"),
    (lambda m: m["target"].pop("arch"), "'target'"),
    (lambda m: m["inputs"][0].update(shape="4x16"), "shape"),
    (lambda m: m["inputs"][0].update(dtype="object"), "dtype"),
    # bench judges a device by the build's measured error: it must be numbers
    (lambda m: m.update(fidelity={"max_abs_err": "abc", "min_cosine": None}), "'fidelity'"),
    (lambda m: m.update(fidelity=[1.0]), "'fidelity'"),
    (lambda m: m.update(compression="int8"), "'compression'"),
])
def test_a_bad_manifest_is_one_clear_error(tmp_path, built, change, words):
    art = copy_of(built, tmp_path)
    edit_manifest(art, change)
    with pytest.raises(ArtifactError, match="invalid manifest") as e:
        Artifact.load(art)
    assert words in str(e.value)


def test_an_unlisted_reference_is_refused_not_loaded_unverified(tmp_path, built):
    art = copy_of(built, tmp_path)
    edit_manifest(art, lambda m: (m["files"].pop(REFERENCE), m["sizes"].pop(REFERENCE)))
    with pytest.raises(ArtifactError, match="not listed"):
        Artifact.load(art)
    (art / REFERENCE).unlink()  # without the file, the artifact simply has no reference
    loaded = Artifact.load(art)
    assert loaded.reference() is None
    assert len(loaded.run(loaded.sample_inputs())) == 1


def test_a_library_for_another_arch_than_the_manifest_says_is_refused(tmp_path, built):
    art = copy_of(built, tmp_path)
    edit_manifest(art, lambda m: m["target"].update(arch="aarch64"))
    with pytest.raises(ArtifactError, match="built for x86_64 but the manifest says aarch64"):
        Artifact.load(art)


def test_a_truncated_library_with_a_fixed_hash_is_refused_before_loading(tmp_path, built):
    art = copy_of(built, tmp_path)
    lib = art / LIB
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    edit_manifest(art, lambda m: (m["files"].update({LIB: sha256(lib)}),
                                  m["sizes"].update({LIB: lib.stat().st_size})))
    with pytest.raises(ArtifactError, match="truncated"):
        Artifact.load(art)


def test_a_pinned_digest_is_required_to_match(tmp_path, built):
    art = Artifact.load(built)
    assert Artifact.load(built, expect_digest=art.digest).digest == art.digest
    edited = copy_of(built, tmp_path)
    edit_manifest(edited, lambda m: m.update(source="someone else"))
    with pytest.raises(ArtifactError, match="not the trusted"):
        Artifact.load(edited, expect_digest=art.digest)


# ---- archives --------------------------------------------------------------------------------------


def test_pack_and_load_round_trip(tmp_path, built):
    archive = Artifact.load(built).pack(tmp_path / "a.tar.gz")
    art = Artifact.load(archive)
    x = art.sample_inputs()
    np.testing.assert_allclose(art.run(x)[0], Artifact.load(built).run(x)[0], rtol=0, atol=0)


def _archive_with(tmp_path, built, extra: dict[str, bytes], declared: dict[str, int] | None = None) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(built.iterdir()):
            tf.add(p, arcname=f"mlp/{p.name}")
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_an_archive_with_unlisted_members_is_refused(tmp_path, built):
    with pytest.raises(ArtifactError, match="not listed"):
        Artifact.load(_archive_with(tmp_path, built, {"mlp/payload.sh": b"rm -rf ~"}))


def test_an_archive_bomb_is_refused_before_extracting(tmp_path, built):
    art = copy_of(built, tmp_path)
    big = 64 << 20
    with open(art / REFERENCE, "wb") as f:  # zeros compress ~1000x: a small archive, a big file
        f.truncate(big)
    edit_manifest(art, lambda m: (m["files"].update({REFERENCE: sha256(art / REFERENCE)}),
                                  m["sizes"].update({REFERENCE: big})))
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(art, arcname="mlp")
    assert archive.stat().st_size < big // 100
    with pytest.raises(ArtifactError, match="more than"):
        Artifact.load(archive, max_archive_bytes=16 << 20)


def test_a_bad_archive_cap_setting_is_one_clear_error(tmp_path, built, monkeypatch):
    archive = Artifact.load(built).pack(tmp_path / "a.tar.gz")
    for bad in ("lots", "-1", "0"):
        monkeypatch.setenv("HWCOMP_MAX_ARCHIVE_BYTES", bad)
        with pytest.raises(ArtifactError, match="HWCOMP_MAX_ARCHIVE_BYTES"):
            Artifact.load(archive)
    monkeypatch.setenv("HWCOMP_MAX_ARCHIVE_BYTES", str(1 << 30))
    assert Artifact.load(archive).digest == Artifact.load(built).digest


# ---- threads ---------------------------------------------------------------------------------------


def test_many_threads_run_one_artifact_and_get_the_right_outputs(built):
    art = Artifact.load(built)
    inputs = [np.random.default_rng(i).standard_normal((4, 16)).astype("float32") for i in range(4)]
    expected = [art.run([x])[0] for x in inputs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(50):
                np.testing.assert_allclose(art.run([inputs[i]])[0], expected[i], rtol=0, atol=0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


def test_many_processes_run_one_artifact(built):
    import subprocess
    import sys

    code = ("import sys, numpy as np, hwcomp; a = hwcomp.load(sys.argv[1]); x = a.sample_inputs(); "
            "ins, outs = a.reference(); y = a.run(x)[0]; "
            "assert np.allclose(y, outs[0], atol=1e-4), abs(y - outs[0]).max(); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(built)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok"


# ---- .pt2 files that would run code ----------------------------------------------------------------


class _Marker:
    """Pickled into a .pt2: unpickling it creates a file (stands in for arbitrary code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pt2_with_pickled_weights_is_refused_unless_trusted(tmp_path):
    import pickle
    import zipfile

    ep = torch.export.export(TinyMLP().eval(), EXAMPLE)
    clean = tmp_path / "clean.pt2"
    torch.export.save(ep, clean)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean) as src:
        cfg_name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
        cfg = json.loads(src.read(cfg_name))
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        payload = cfg_name.rsplit("/", 1)[0] + "/" + first["path_name"]
        with zipfile.ZipFile(evil, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename == cfg_name:
                    data = json.dumps(cfg).encode()
                elif info.filename == payload:
                    data = pickle.dumps(_Marker(str(marker)))
                dst.writestr(info, data)
    with pytest.raises(HwcompError, match="--trust-pickle"):
        hwcomp.compile(evil, "host", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # The clean file compiles with no flag.
    art = hwcomp.compile(clean, "host", tmp_path / "ok")
    assert art.fidelity["min_cosine"] > 0.9999
