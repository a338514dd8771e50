"""Every user error the CLI can meet is one line: ``hwcomp: error: ...`` (or argparse's own
``error: argument --X: ...``), exit code 2, no traceback — and nothing is silently ignored.

One small model is compiled once for the ``run`` cases; everything else fails before any work.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from hwcomp import cli
from hwcomp.cli import load_inputs, main
from hwcomp.errors import HwcompError, InputError
from hwcomp.models import MLP


def run_cli(capfd, argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line(result, *words) -> str:
    """``hwcomp: error: ...``: one line on stderr with ``words`` in it, exit code 2."""
    code, _, err = result
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwcomp: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def assert_usage_error(result, *words) -> str:
    """argparse's refusal: usage, then one ``error: argument --X: ...`` line; exit code 2."""
    code, _, err = result
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert ": error: " in last and err.lstrip().startswith("usage:"), err
    for w in words:
        assert w in last, (w, last)
    return last


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(MLP(32, 64, 5).eval(), (torch.randn(3, 32),)), str(d / "mlp.pt2"))

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a * 2 + b

    torch.export.save(torch.export.export(Two(), (torch.randn(2, 4), torch.randn(2, 4))), str(d / "two.pt2"))
    np.savez(d / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 3, 32)).astype("float32"))
    np.save(d / "x.npy", np.zeros((3, 32), "float32"))
    np.savez(d / "y_only.npz", y=np.zeros(4, "int64"))
    good = (d / "calib.npz").read_bytes()
    (d / "truncated.npz").write_bytes(good[: len(good) // 2])
    return d


@pytest.fixture(scope="module")
def artifact(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "mlp"
    assert main(["compile", str(models / "mlp.pt2"), "-t", "host", "-o", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- compile: sparsity


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1.0", "nan", "inf", "abc"])
def test_sparsity_out_of_range(models, tmp_path, capfd, value):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--sparsity", value])
    assert_usage_error(r, "argument --sparsity", "[0, 1)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["2", "0", "1", "-0.5", "nan"])
def test_sparse_threshold_out_of_range(models, tmp_path, capfd, value):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--sparse-threshold", value])
    assert_usage_error(r, "argument --sparse-threshold", "(0, 1)")


def test_db_that_is_a_file_is_refused(models, tmp_path, capfd):
    (tmp_path / "records.tar.gz").write_bytes(b"not a directory")
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--db", tmp_path / "records.tar.gz"])
    assert_one_line(r, "--db", "not a directory")
    assert not (tmp_path / "o").exists()


def test_block_alone_is_refused_not_ignored(models, tmp_path, capfd):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--block", "8x1"])
    assert_one_line(r, "--block 8x1", "--sparsity", "--sparse-threshold")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["0x1", "8", "axb", "4x4x4"])
def test_bad_block(models, tmp_path, capfd, value):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--sparsity", "0.5", "--block", value])
    assert_usage_error(r, "argument --block")


# ----------------------------------------------------------------------------- compile: --input-shape


def test_input_shape_for_a_missing_input_is_refused(models, tmp_path, capfd):
    """``x:4x17`` for a model whose inputs are a and b: refused, naming them, not ignored."""
    r = run_cli(capfd, ["compile", models / "two.pt2", "-o", tmp_path / "o", "--input-shape", "x:4x17"])
    line = assert_one_line(r, "--input-shape", "'x'", "'a'", "'b'")
    assert "Traceback" not in line
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--input-shape", "y:3x32"])
    assert_one_line(r, "--input-shape", "'y'", "'x'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("item,words", [
    ("x:-4x16", ["x:-4x16", "-4", "not positive"]),
    ("x:0x16", ["0", "not positive"]),
    ("x:4xa", ["NAME:DxDxD"]),
    ("x:", ["NAME:DxDxD"]),
    ("4x16", ["NAME:DxDxD"]),
    ("x:1e3", ["NAME:DxDxD"]),
])
def test_bad_input_shape_syntax(models, tmp_path, capfd, item, words):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--input-shape", item])
    line = assert_one_line(r, "bad --input-shape", *words)
    assert "dynamic" not in line


def test_input_shape_given_twice(models, tmp_path, capfd):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--input-shape", "x:3x32",
                        "--input-shape", "x:3x32"])
    assert_one_line(r, "'x'", "twice")


# ----------------------------------------------------------------------------- compile: target .toml

GOOD_X86 = 'arch = "x86_64"\nvector_bits = 256\nsparse_block = [8, 1]\n[tvm]\nkind = "llvm"\n' \
           'mtriple = "x86_64-linux-gnu"\nmcpu = "haswell"\n'
GOOD_ARM = 'arch = "aarch64"\nvector_bits = 128\nsparse_block = [4, 1]\n[tvm]\nkind = "llvm"\n' \
           'mtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a72"\nmattr = ["+neon"]\n'


@pytest.mark.parametrize("text,words", [
    (GOOD_X86.replace('kind = "llvm"', 'kind = "nosuchkind"'), ["tvm.kind", "nosuchkind", "llvm, cuda"]),
    (GOOD_X86.replace('kind = "llvm"', 'kind = "opencl"'), ["tvm.kind", "opencl"]),
    (GOOD_X86.replace('kind = "llvm"', 'kind = 3'), ["tvm.kind", "expected a string"]),
    ('arch = "x86_64"\nvector_bits = 256\nsparse_block = [8, 1]\n', ["'tvm'", "missing"]),
    (GOOD_X86.replace("[8, 1]", "8"), ["'sparse_block'", "expected an array", "8"]),
    (GOOD_X86.replace("[8, 1]", "[8]"), ["'sparse_block'", "[ROWS, COLS]"]),
    (GOOD_X86.replace("[8, 1]", "[0, 1]"), ["'sparse_block[0]'", "between 1 and"]),
    (GOOD_X86.replace("[8, 1]", '["8", 1]'), ["'sparse_block[0]'", "expected an integer"]),
    (GOOD_X86.replace("vector_bits = 256", 'vector_bits = "256"'), ["'vector_bits'", "expected an integer"]),
    (GOOD_X86.replace("vector_bits = 256", "vector_bits = 100"), ["'vector_bits'", "multiple of 32"]),
    (GOOD_X86.replace("vector_bits = 256", "vector_bits = true"), ["'vector_bits'", "boolean"]),
    (GOOD_X86.replace('arch = "x86_64"', 'arch = "riscv64"'), ["'arch'", "riscv64", "x86_64, aarch64"]),
    (GOOD_X86 + 'int8_dot = "avx9"\n', ["invalid target description"]),
    ('int8_dot = "avx9"\n' + GOOD_X86, ["'int8_dot'", "avx9"]),
    ('vectorbits = 256\n' + GOOD_X86, ["'vectorbits'", "unknown field"]),
    ('features = "avx2"\n' + GOOD_X86, ["'features'", "expected an array"]),
    (GOOD_X86.replace('mcpu = "haswell"', 'mcpu = "notacpu"'), ["'tvm.mcpu'", "notacpu", "x86_64-linux-gnu"]),
    (GOOD_X86.replace('mcpu = "haswell"', "mcpu = 5"), ["'tvm.mcpu'", "expected a string"]),
    (GOOD_ARM.replace("cortex-a72", "haswell"), ["'tvm.mcpu'", "haswell", "aarch64-linux-gnu"]),
    (GOOD_ARM.replace('"+neon"', '"+neno"'), ["'tvm.mattr[0]'", "neno"]),
    (GOOD_ARM.replace('"+neon"', '"neon"'), ["'tvm.mattr[0]'", "+FEATURE"]),
    (GOOD_ARM.replace('["+neon"]', '"+neon"'), ["'tvm.mattr'", "expected an array"]),
    (GOOD_X86.replace("x86_64-linux-gnu", "aarch64-linux-gnu"), ["'tvm.mtriple'", "arch is 'x86_64'"]),
    (GOOD_X86.replace("x86_64-linux-gnu", "bogus-triple"), ["'tvm.mtriple'", "bogus-triple"]),
    pytest.param(GOOD_ARM.replace('mtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a72"\n', ""),
                 ["'tvm.mtriple'", "missing"],
                 marks=pytest.mark.skipif(platform.machine() != "x86_64", reason="LLVM's default triple is aarch64")),
    (GOOD_X86 + "num-cores = 0\n", ["'tvm.num-cores'", "between 1 and"]),
    (GOOD_X86 + 'num-cores = "4"\n', ["'tvm.num-cores'", "expected an integer"]),
    (GOOD_X86 + "foo = 1\n", ["'tvm'", "TVM rejects it", "foo"]),
    (GOOD_X86 + '[host]\nkind = "llvm"\n', ["'host'", "GPU"]),
    ('arch = "x86_64"\nvector_bits = 128\nsparse_block = [16, 1]\n[tvm]\nkind = "cuda"\narch = "sm_x"\n',
     ["'tvm.arch'", "sm_80"]),
    ('arch = "x86_64"\nvector_bits = 128\nsparse_block = [16, 1]\n[tvm]\nkind = "cuda"\narch = "sm_80"\n'
     '[host]\nkind = "cuda"\n', ["'host.kind'", "llvm"]),
    ("arch = \n", ["not valid TOML"]),
    ("tvm = 5\n" + 'arch = "x86_64"\nvector_bits = 256\nsparse_block = [8, 1]\n', ["'tvm'", "expected a table"]),
])
def test_bad_target_toml(models, tmp_path, capfd, text, words):
    toml = tmp_path / "board.toml"
    toml.write_text(text)
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-t", toml, "-o", tmp_path / "o"])
    line = assert_one_line(r, "invalid target description", str(toml), *words)
    assert "KeyError" not in line and "object is not iterable" not in line


def test_target_toml_not_utf8_missing_or_a_folder(models, tmp_path, capfd):
    toml = tmp_path / "bin.toml"
    toml.write_bytes(b'arch = "\xff\xfe"\n')
    assert_one_line(run_cli(capfd, ["compile", models / "mlp.pt2", "-t", toml, "-o", tmp_path / "o"]), "UTF-8")
    assert_one_line(run_cli(capfd, ["compile", models / "mlp.pt2", "-t", tmp_path / "nope.toml", "-o",
                                    tmp_path / "o"]), "nope.toml", "does not exist")
    (tmp_path / "dir.toml").mkdir()
    assert_one_line(run_cli(capfd, ["compile", models / "mlp.pt2", "-t", tmp_path / "dir.toml", "-o",
                                    tmp_path / "o"]), "dir.toml", "directory")


def test_good_target_tomls_still_load(tmp_path):
    from hwcomp.target import get_target

    (tmp_path / "a.toml").write_text(GOOD_ARM)
    (tmp_path / "x.toml").write_text(GOOD_X86)
    assert get_target(str(tmp_path / "a.toml")).tvm["mattr"] == ["+neon"]
    assert get_target(str(tmp_path / "x.toml")).tvm_target().mcpu == "haswell"


# ----------------------------------------------------------------------------- compile: quantize / calib


def test_quantize_without_calib_fails_before_any_work(models, tmp_path, capfd):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--quantize", "int8"])
    assert_one_line(r, "--quantize int8", "--calib")
    assert r[1] == ""  # nothing printed before the error (it used to say "3 layers quantized")


@pytest.mark.parametrize("calib,words", [
    ("missing.npz", ["missing.npz", "does not exist"]),
    ("x.npy", ["x.npy", ".npy file"]),
    ("truncated.npz", ["truncated.npz", "not a readable .npz"]),
    (".", ["directory"]),
])
def test_bad_calib_file(models, tmp_path, capfd, calib, words):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--quantize", "int8", "--calib",
                        models / calib])
    assert_one_line(r, "calibration file", *words)
    assert r[1] == ""


def test_quantize_flags_without_quantize_are_refused(models, tmp_path, capfd):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--calib", models / "calib.npz"])
    assert_one_line(r, "--calib", "--quantize int8")
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--skip", "net.0",
                        "--full-range-weights"])
    assert_one_line(r, "--skip", "--full-range-weights", "--quantize int8")


@pytest.mark.parametrize("value", ["1.5", "0", "nan"])
def test_fidelity_target_range(models, tmp_path, capfd, value):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--quantize", "int8", "--calib",
                        models / "calib.npz", "--fidelity-target", value])
    assert_usage_error(r, "argument --fidelity-target", "(0, 1]")


def test_archive_into_missing_folder_fails_before_compiling(models, tmp_path, capfd):
    r = run_cli(capfd, ["compile", models / "mlp.pt2", "-o", tmp_path / "o", "--archive", tmp_path / "no" / "a.tgz"])
    assert_one_line(r, "--archive", "does not exist")
    assert not (tmp_path / "o").exists()


def test_missing_model_file(tmp_path, capfd):
    assert_one_line(run_cli(capfd, ["compile", tmp_path / "m.pt2", "-o", tmp_path / "o"]), "m.pt2", "does not exist")


# ----------------------------------------------------------------------------- run --inputs / --output


@pytest.mark.parametrize("name,words", [
    ("truncated.npz", ["truncated.npz", "not a readable .npz"]),
    ("x.npy", ["x.npy", ".npy file", "np.savez"]),
    ("missing.npz", ["missing.npz", "does not exist"]),
    ("garbage.npz", ["garbage.npz", "not a .npz"]),
])
def test_run_unreadable_inputs(artifact, models, capfd, name, words):
    (models / "garbage.npz").write_bytes(b"hello, not a zip")
    assert_one_line(run_cli(capfd, ["run", artifact, "--inputs", models / name]), "inputs file", *words)


def test_run_inputs_wrong_name_is_refused_not_taken_by_position(artifact, tmp_path, capfd):
    np.savez(tmp_path / "in.npz", y=np.zeros((3, 32), "float32"))
    line = assert_one_line(run_cli(capfd, ["run", artifact, "--inputs", tmp_path / "in.npz"]),
                           "do not match the model", "['x']", "['y']")
    assert "arr_0" in line  # says what positional names are taken


def test_run_inputs_positional_npz_still_works(artifact, tmp_path, capfd):
    x = np.random.default_rng(1).standard_normal((3, 32)).astype("float32")
    np.savez(tmp_path / "in.npz", x)  # arr_0
    code, out, err = run_cli(capfd, ["run", artifact, "--inputs", tmp_path / "in.npz", "--output",
                                     tmp_path / "o.npz"])
    assert code == 0, err
    np.savez(tmp_path / "named.npz", x=x)
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "named.npz"), "--output",
                 str(tmp_path / "o2.npz")]) == 0
    with np.load(tmp_path / "o.npz") as a, np.load(tmp_path / "o2.npz") as b:
        np.testing.assert_array_equal(a["output0"], b["output0"])


@pytest.mark.parametrize("arrays,words", [
    ({"arr_1": np.zeros((3, 32), "float32")}, ["['arr_1']"]),
    ({"x": np.zeros((4, 32), "float32")}, ["'x'", "shape (4, 32)", "(3, 32)"]),
    ({"x": np.zeros((3, 32), "float64")}, ["'x'", "dtype float64", "float32"]),
    ({"x": np.zeros((3, 32), "float32"), "extra": np.zeros(2)}, ["unexpected ['extra']"]),
    ({"x": np.array(["a", "b"])}, ["dtype <U1", "expected numbers"]),
])
def test_run_inputs_that_do_not_match(artifact, tmp_path, capfd, arrays, words):
    np.savez(tmp_path / "in.npz", **arrays)
    assert_one_line(run_cli(capfd, ["run", artifact, "--inputs", tmp_path / "in.npz"]), *words)


def test_run_output_into_missing_folder(artifact, tmp_path, capfd):
    r = run_cli(capfd, ["run", artifact, "--output", tmp_path / "nodir" / "out.npz"])
    assert_one_line(r, "--output", "nodir", "does not exist")
    assert r[1] == ""  # refused before running
    assert_one_line(run_cli(capfd, ["run", artifact, "--output", tmp_path]), "--output", "folder")


def test_load_inputs_directly(tmp_path):
    specs = [{"name": "a", "shape": [2], "dtype": "int64"}, {"name": "b", "shape": [1], "dtype": "float32"}]
    np.savez(tmp_path / "p.npz", np.arange(2), np.ones(1, "float32"))
    a, b = load_inputs(tmp_path / "p.npz", specs)
    assert a.tolist() == [0, 1] and b.dtype == np.float32
    np.savez(tmp_path / "r.npz", b=np.ones(1, "float32"), a=np.arange(2))  # by name, any order
    assert [x.tolist() for x in load_inputs(tmp_path / "r.npz", specs)] == [[0, 1], [1.0]]
    np.savez(tmp_path / "q.npz", a=np.arange(2), c=np.ones(1, "float32"))
    with pytest.raises(InputError, match=r"missing \['b'\], unexpected \['c'\]"):
        load_inputs(tmp_path / "q.npz", specs)


def test_expect_digest(artifact, tmp_path, capfd):
    code, out, _ = run_cli(capfd, ["inspect", artifact])
    assert code == 0
    digest = next(line.split()[1] for line in out.splitlines() if line.startswith("digest"))
    assert run_cli(capfd, ["run", artifact, "--expect-digest", digest.upper()])[0] == 0
    assert_one_line(run_cli(capfd, ["run", artifact, "--expect-digest", "0" * 64]), "refusing to load")
    assert_usage_error(run_cli(capfd, ["inspect", artifact, "--expect-digest", "abc"]), "argument --expect-digest",
                       "sha256")


def test_compile_refuses_a_foreign_output_folder_unless_forced(models, tmp_path, capfd):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line(run_cli(capfd, ["compile", models / "mlp.pt2", "-o", out]), "notes.txt", "--force")
    assert (out / "notes.txt").is_file()
    assert run_cli(capfd, ["compile", models / "mlp.pt2", "-o", out, "--force", "--trust-pickle"])[0] == 0
    assert (out / "manifest.json").is_file() and not (out / "notes.txt").exists()


# ----------------------------------------------------------------------------- bench / deploy


@pytest.mark.parametrize("flag,value,words", [
    ("--repeat", "0", ["argument --repeat", "from 1"]),
    ("--repeat", "-1", ["argument --repeat", "from 1"]),
    ("--repeat", str(2**40), ["argument --repeat"]),
    ("--number", "0", ["argument --number", "from 1"]),
    ("--min-repeat-ms", "-1", ["argument --min-repeat-ms"]),
    ("--session-timeout", "-1", ["argument --session-timeout", ">= 0"]),
    ("--session-timeout", "nan", ["argument --session-timeout", ">= 0"]),
    ("--session-timeout", "inf", ["argument --session-timeout"]),
])
def test_bench_number_arguments(tmp_path, capfd, flag, value, words):
    assert_usage_error(run_cli(capfd, ["bench", tmp_path / "art", flag, value]), *words)


@pytest.mark.parametrize("url,words", [
    ("rpc://[::1:9090", ["bad device URL", "Invalid IPv6 URL"]),
    ("rpc://host", ["bad device URL", "HOST:PORT"]),
    ("tracker://h:9190", ["bad device URL", "KEY"]),
    ("http://h:1", ["bad device URL", "scheme"]),
])
def test_bad_device_url(tmp_path, capfd, url, words):
    assert_one_line(run_cli(capfd, ["bench", tmp_path / "art", "--device", url]), *words)
    assert_one_line(run_cli(capfd, ["deploy", tmp_path / "art", "--rpc", url]), *words)


def test_bench_report_into_missing_folder(tmp_path, capfd):
    assert_one_line(run_cli(capfd, ["bench", tmp_path / "art", "--json", tmp_path / "no" / "r.json"]),
                    "--json", "does not exist")


# ----------------------------------------------------------------------------- tune / prune / optimize


@pytest.mark.parametrize("argv,words", [
    (["--sparsity", "1.5"], ["argument --sparsity", "[0, 1)"]),
    (["--sparsity", "nan"], ["argument --sparsity"]),
    (["--sparse-threshold", "2"], ["argument --sparse-threshold"]),
    (["--trials", "0"], ["argument --trials"]),
    (["--rpc-tracker", "host:notaport"], ["argument --rpc-tracker", "HOST:PORT"]),
])
def test_tune_argument_ranges(models, capfd, argv, words):
    assert_usage_error(run_cli(capfd, ["tune", models / "mlp.pt2", *argv]), *words)


def test_tune_block_alone_and_bad_shape(models, capfd):
    assert_one_line(run_cli(capfd, ["tune", models / "mlp.pt2", "--block", "8x1"]), "--block", "--sparsity")
    assert_one_line(run_cli(capfd, ["tune", models / "mlp.pt2", "--input-shape", "x:-1x32"]), "not positive")
    assert_one_line(run_cli(capfd, ["tune", models / "mlp.pt2", "--time-budget", "soon"]), "duration")


@pytest.mark.parametrize("argv,words", [
    (["--sparsity", "1.5"], ["argument --sparsity", "[0, 1)"]),
    (["--sparsity", "-0.1"], ["argument --sparsity"]),
    (["--granularity", "block:0x1"], ["argument --granularity", "positive"]),
    (["--granularity", "rows"], ["argument --granularity"]),
    (["--batch-size", "0"], ["argument --batch-size"]),
    (["--lr", "-1"], ["argument --lr"]),
])
def test_prune_argument_ranges(models, capfd, argv, words):
    assert_usage_error(run_cli(capfd, ["prune", models / "mlp.pt2", *argv]), *words)


@pytest.mark.parametrize("argv,words", [
    (["--criterion", "taylor"], ["--criterion taylor", "--data"]),
    (["--criterion", "l1", "--distill"], ["--distill", "--finetune-epochs"]),
    (["--criterion", "l1", "--finetune-epochs", "2"], ["--data"]),
    (["--criterion", "l1", "--data", "MODELS/x.npy"], ["x.npy", ".npy file"]),
    (["--criterion", "l1", "--data", "MODELS/y_only.npz"], ["no array 'x'", "['y']"]),
    (["--criterion", "l1", "-o", "MODELS/no/out.pt2"], ["--output", "does not exist"]),
])
def test_prune_refusals(models, capfd, argv, words):
    argv = [a.replace("MODELS", str(models)) for a in argv]
    assert_one_line(run_cli(capfd, ["prune", models / "mlp.pt2", *argv]), *words)


def test_prune_bad_model_spec(models, tmp_path, capfd):
    (tmp_path / "f.py").write_text("def make():\n    return None\n")
    assert_one_line(run_cli(capfd, ["prune", f"{tmp_path / 'f.py'}:nothere", "--criterion", "l1"]), "'nothere'")
    assert_one_line(run_cli(capfd, ["prune", "model.bin", "--criterion", "l1"]), "file.py:factory")


@pytest.fixture
def factory(tmp_path):
    (tmp_path / "f.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 4), torch.randn(2, 4)\n")
    np.savez(tmp_path / "c.npz", x=np.zeros((8, 2, 4), "float32"))
    return f"{tmp_path / 'f.py'}:make"


@pytest.mark.parametrize("argv,words", [
    (["--latency-budget", "-1"], ["argument --latency-budget", "> 0"]),
    (["--latency-budget", "0"], ["argument --latency-budget"]),
    (["--latency-budget", "nan"], ["argument --latency-budget"]),
    (["--fidelity-target", "1.5"], ["argument --fidelity-target", "(0, 1]"]),
    (["--fidelity-target", "0.99", "--sparsities", "0.5,1.5"], ["argument --sparsities", "'1.5'"]),
    (["--fidelity-target", "0.99", "--ranks", "150"], ["argument --ranks", "'150'"]),
    (["--fidelity-target", "0.99", "--widths", "x"], ["argument --widths"]),
])
def test_optimize_argument_ranges(factory, tmp_path, capfd, argv, words):
    assert_usage_error(run_cli(capfd, ["optimize", factory, *argv, "--calib", tmp_path / "c.npz"]), *words)


@pytest.mark.parametrize("calib,words", [
    ("missing.npz", ["missing.npz", "does not exist"]),
    ("x.npy", ["x.npy", ".npy file"]),
    ("truncated.npz", ["truncated.npz", "not a readable .npz"]),
])
def test_optimize_bad_calib(factory, models, capfd, calib, words):
    r = run_cli(capfd, ["optimize", factory, "--fidelity-target", "0.99", "--calib", models / calib])
    assert_one_line(r, "calibration file", *words)
    assert r[1] == ""


def test_optimize_load_samples_refuses_npy(models):
    from hwcomp.policy.optimize import load_samples

    with pytest.raises(HwcompError, match=".npy file"):
        load_samples(models / "x.npy", 1)
    with pytest.raises(HwcompError, match="not a readable .npz"):
        load_samples(models / "truncated.npz", 1)


# ----------------------------------------------------------------------------- main()


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "No such file or directory", "/nowhere/f"),
                                 PermissionError(13, "Permission denied", "/root/x"),
                                 IsADirectoryError(21, "Is a directory", "/tmp")])
def test_main_reports_path_errors_in_one_line(monkeypatch, tmp_path, capfd, exc):
    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_inspect", boom)
    line = assert_one_line(run_cli(capfd, ["inspect", tmp_path]), exc.strerror)
    assert exc.filename in line


def test_main_does_not_hide_bugs(monkeypatch, tmp_path):
    def bug(args):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(cli, "cmd_inspect", bug)
    with pytest.raises(ZeroDivisionError):
        main(["inspect", str(tmp_path)])
