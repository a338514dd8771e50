"""Fuzzing what a user types or hands over: every reader either succeeds or fails with one clean line.

The property, for each reader, over 1,000 generated cases: the result is a success, a one-line
``HwcompError`` / ``DeviceURLError``, or argparse's ``SystemExit(2)`` — never another exception.
Readers: ``--input-shape`` (``parse_input_shapes``), device URLs (``parse_device_url``), target
``.toml`` descriptions (``get_target``, what ``-t file.toml`` reads), the argument parser and the
checks ``main`` runs before any work (compile / run / bench argv), and ``run --inputs`` (``load_inputs``).
Nothing here compiles a model.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tomllib
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hwcomp.cli import build_parser, check_args, load_inputs
from hwcomp.errors import HwcompError
from hwcomp.frontend.model import parse_input_shapes
from hwcomp.runtime.rpc import DeviceURL, DeviceURLError, parse_device_url
from hwcomp.target import Target, _targets_dir, get_target

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])

CLEAN = (HwcompError, DeviceURLError)


def one_line(e: BaseException) -> None:
    msg = str(e)
    assert msg.strip() and "\n" not in msg.strip() and "Traceback" not in msg, repr(msg)
    event(f"{type(e).__name__}: {_shape_of(msg)}")  # see them with --hypothesis-show-statistics


def _shape_of(msg: str) -> str:
    """A message without its quoted/variable parts, to count kinds of errors."""
    msg = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|\([^)]*\)", "Q", msg)
    return re.sub(r"[0-9]+", "N", re.sub(r"^.*?(field Q|argument \S+)", r"\1", msg))[:70]


# ----------------------------------------------------------------------------- --input-shape

dims = st.one_of(st.integers(-3, 70).map(str), st.integers(-2**70, 2**70).map(str),
                 st.sampled_from(["", " 4", "4 ", "+3", "0x10", "1e3", "٣", "²", "4_0", "nan", "-0", "x"]),
                 st.text(max_size=4))
valid_items = st.builds(lambda n, ds: f"{n}:{'x'.join(map(str, ds))}",
                        st.sampled_from(["x", "ids", "a:b", "input.1", "attention_mask"]),
                        st.lists(st.integers(1, 2**31 - 1) | st.integers(1, 64), min_size=1, max_size=5))
shape_items = st.one_of(
    valid_items, valid_items,
    st.text(max_size=30),
    st.builds(lambda n, sep, ds, x: n + sep + x.join(ds),
              st.one_of(st.sampled_from(["x", "ids", "a:b", "", " ", "input.1"]), st.text(max_size=8)),
              st.sampled_from([":", ":", ":", "", "::", "="]), st.lists(dims, min_size=0, max_size=5),
              st.sampled_from(["x", "X", "x", "*", ","])),
)


@FUZZ
@given(st.lists(shape_items, max_size=4))
def test_fuzz_parse_input_shapes(items):
    try:
        shapes = parse_input_shapes(items)
    except HwcompError as e:
        one_line(e)
        return
    assert len(shapes) == len(items)
    event("ok")
    for name, shape in shapes.items():
        assert name.strip() and shape and all(isinstance(d, int) and 1 <= d < 2**31 for d in shape)


# ----------------------------------------------------------------------------- device URLs

hosts = st.one_of(st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "::1", "h", "", "[", "]", "a b",
                                   "user:pw@h", "h%20", "[fe80::1%eth0]", "ü.example", "[v1.x]"]),
                  st.text(max_size=12))
ports = st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["", "0", "65535", "65536", "9090x", " 1", "+1",
                                                                    "١٢", "9" * 30]), st.text(max_size=6))
urls = st.one_of(
    st.text(max_size=40),
    st.builds(lambda sch, h, p, tail: f"{sch}{h}:{p}{tail}",
              st.sampled_from(["rpc://", "tracker://", "http://", "", "rpc:", "RPC://", "local://", "rpc:///"]),
              hosts, ports,
              st.one_of(st.sampled_from(["", "/", "/rpi4", "/a/b", "/k ey", "?q=1", "#f", "/%00", "//x"]),
                        st.text(max_size=8))),
    st.sampled_from(["local", " local ", "LOCAL", "rpc://[::1:9090", "rpc://[::1]:9090", "tracker://h:1/k"]),
)


@FUZZ
@given(urls)
def test_fuzz_parse_device_url(url):
    try:
        parsed = parse_device_url(url)
    except DeviceURLError as e:
        one_line(e)
        return
    assert isinstance(parsed, DeviceURL) and parsed.kind in ("local", "rpc", "tracker")
    event(f"ok {parsed.kind}")
    if parsed.kind != "local":
        assert parsed.host and 0 < parsed.port < 65536


# ----------------------------------------------------------------------------- target .toml


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(d: dict) -> str:
    lines, tables = [], []
    for k, v in d.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in lines]
    for k, table in tables:
        out.append(f"[{json.dumps(k)}]")
        out += [f"{json.dumps(tk)} = {_toml_value(tv)}" for tk, tv in table.items()]
    return "\n".join(out) + "\n"


SHIPPED = [tomllib.loads((_targets_dir() / f"{n}.toml").read_text())
           for n in ("x86-avx2", "rpi4", "rpi5", "jetson-orin", "graviton3", "x86-avx512-vnni", "h100")]

scalars = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, 4, 8, 128, 256, -1, 2**63, 33]),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=12),
                    st.sampled_from(["llvm", "cuda", "c", "nosuchkind", "x86_64", "aarch64", "arm", "haswell",
                                     "cortex-a72", "notacpu", "help", "", "sm_80", "sm_x", "+neon", "+neno",
                                     "neon", "-avx2", "x86_64-linux-gnu", "aarch64-linux-gnu", "bogus-triple",
                                     "arm64-apple-macos", "vnni", "sdot", "none", "host", "generic",
                                     "aarch64-linux-gnu-g++"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(
                                                           ["kind", "mcpu", "mtriple", "mattr", "num-cores", "arch",
                                                            "keys", "foo", "libs", "host"]), inner, max_size=4)),
                      max_leaves=6)
FIELDS = ["description", "arch", "vector_bits", "int8_dot", "sparse_block", "cross_compiler", "rpc_key", "features",
          "tvm", "host", "vectorbits", "extra"]
TVM_KEYS = ["kind", "mcpu", "mtriple", "mattr", "num-cores", "arch", "keys", "libs", "foo", "max_num_threads"]


@st.composite
def plausible_targets(draw) -> dict:
    """A shipped description with a few fields dropped, replaced by wrong types/values, or added."""
    d = json.loads(json.dumps(draw(st.sampled_from(SHIPPED))))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "tvm", "host"]))
        table = d if where == "top" else d.setdefault(where, {}) if draw(st.booleans()) else d.get(where)
        if not isinstance(table, dict):
            continue
        key = draw(st.sampled_from(FIELDS if where == "top" else TVM_KEYS))
        action = draw(st.sampled_from(["drop", "set", "set", "set"]))
        if action == "drop":
            table.pop(key, None)
        else:
            table[key] = draw(values)
    return d


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _check_target_file(path) -> None:
    try:
        t = get_target(str(path))
    except HwcompError as e:
        one_line(e)
        return
    assert isinstance(t, Target) and t.arch in ("x86_64", "aarch64") and t.tvm["kind"] in ("llvm", "cuda")
    assert t.vector_bits > 0 and len(t.sparse_block) == 2 and min(t.sparse_block) >= 1
    t.tvm_target()  # what every build makes of it
    event("ok")


@FUZZ
@given(st.one_of(plausible_targets().map(to_toml), st.text(max_size=200),
                 plausible_targets().map(to_toml).flatmap(
                     lambda text: st.integers(0, len(text)).map(lambda i: text[:i]))))
def test_fuzz_target_toml_text(fuzz_dir, text):
    path = fuzz_dir / "t.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check_target_file(path)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_target_toml_bytes(fuzz_dir, data):
    path = fuzz_dir / "b.toml"
    path.write_bytes(data)
    _check_target_file(path)


def test_shipped_targets_still_load():
    from hwcomp.target import target_names

    for name in target_names():
        assert get_target(name).name == name


# ----------------------------------------------------------------------------- argv (parse + checks)

FLAG_VALUES = {
    "compile": {"-t": ["host", "x86-avx2", "rpi4", "nope", "T.toml", "nosuch.toml"], "-o": ["OUT", "MISSING/out"],
                "--input-shape": ["x:1x4", "x:-4x16", "x:0", "x", ":1", "x:1x4"], "--db": ["DB"],
                "--archive": ["a.tar.gz", "MISSING/a.tar.gz", "DIR"],
                "--sparsity": ["0.5", "1.5", "-0.1", "1.0", "nan", "inf", "0", "abc"],
                "--block": ["8x1", "0x1", "8", "axb", "4x4x4", "9999x1"],
                "--sparse-threshold": ["0.7", "2", "0", "1", "nan", "-1"],
                "--quantize": ["int8", "int4"], "--calib": ["CALIB", "missing.npz", "NPY", "DIR"],
                "--calib-method": ["minmax", "kl"], "--skip": ["net.0"],
                "--fidelity-target": ["0.99", "1.5", "0", "nan"],
                "--full-range-weights": None, "--exact-math": None, "--no-winograd": None, "--force": None, "--trust-pickle": None},
    "run": {"--inputs": ["CALIB", "missing.npz", "NPY"], "--output": ["o.npz", "MISSING/o.npz", "DIR"],
            "--expect-digest": ["0" * 64, "abc", "g" * 64, " " + "A" * 64]},
    "bench": {"--device": ["local", "rpc://127.0.0.1:9090", "rpc://[::1:9090", "tracker://h:1/k", "tracker://h:1",
                           "rpc://h", "http://x:1", ""],
              "--repeat": ["5", "0", "-1", "1e3", str(2**40)], "--number": ["1", "0", "x"],
              "--min-repeat-ms": ["0", "-1"], "--session-timeout": ["10", "0", "-1", "nan", "inf"],
              "--arch": ["aarch64"], "--json": ["r.json", "MISSING/r.json", "DIR"], "--plot": ["p.png"],
              "--profile": None, "--cache-flush": None},
}
POSITIONAL = {"compile": ["MODEL", "missing.pt2", "DIR"], "run": ["ART"], "bench": ["ART"]}


def _resolve(token: str, d) -> str:
    names = {"MODEL": d / "m.pt2", "CALIB": d / "calib.npz", "NPY": d / "a.npy", "DIR": d, "OUT": d / "out",
             "MISSING": d / "missing", "T.toml": d / "tgt.toml", "DB": d / "db", "ART": d / "art"}
    head, sep, tail = token.partition("/")
    return str(names[head]) + (sep + tail if sep else "") if head in names else token


@st.composite
def argvs(draw):
    verb = draw(st.sampled_from(sorted(FLAG_VALUES)))
    argv = [verb]
    if draw(st.integers(0, 9)):
        argv.append(draw(st.sampled_from(POSITIONAL[verb])))
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(sorted(FLAG_VALUES[verb])))
        choices = FLAG_VALUES[verb][flag]
        argv.append(flag)
        if choices is not None:
            argv.append(draw(st.one_of(st.sampled_from(choices), st.text(max_size=6))))
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.text(max_size=8)))
    if verb == "compile" and "-o" not in argv and draw(st.integers(0, 4)):
        argv += ["-o", "OUT"]
    return argv


@pytest.fixture(scope="module")
def argv_files(fuzz_dir):
    d = fuzz_dir / "argv"
    d.mkdir()
    (d / "m.pt2").write_bytes(b"not really a program: the checks do not import it")
    np.savez(d / "calib.npz", x=np.zeros((4, 3, 32), "float32"))
    np.save(d / "a.npy", np.zeros(3))
    (d / "tgt.toml").write_text(to_toml(SHIPPED[0]))
    return d


def _help_like(token: str) -> bool:
    return token.startswith("-h") or (token.startswith("--h") and "--help".startswith(token.split("=")[0]))


PARSER = build_parser()  # what main() builds each time (11 ms); parsing does not change it


@FUZZ
@given(argvs())
def test_fuzz_argv_parse_and_checks(argv_files, argv):
    argv = [_resolve(t, argv_files) for t in argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = PARSER.parse_args(argv)
    except SystemExit as e:
        assert e.code == 2 or (e.code == 0 and any(_help_like(t) for t in argv)), (argv, e.code)
        assert "Traceback" not in err.getvalue()
        event(f"argparse {e.code}: {_shape_of(err.getvalue().strip().splitlines()[-1]) if e.code else ''}")
        return
    try:
        check_args(args)
    except CLEAN as e:
        one_line(e)
        return
    event(f"ok {argv[0]}")


# ----------------------------------------------------------------------------- run --inputs

SPECS = [{"name": "x", "shape": [3, 4], "dtype": "float32"}, {"name": "mask", "shape": [3], "dtype": "int64"}]
names = st.one_of(st.sampled_from(["x", "mask", "arr_0", "arr_1", "arr_2", "X", "x.npy", "y"]),
                  st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=6))
arrays = st.builds(lambda shape, dtype: np.zeros(shape, dtype),
                   st.sampled_from([(3, 4), (3,), (4, 3), (), (0,), (3, 4, 1), (1, 3)]),
                   st.sampled_from(["float32", "float64", "int64", "int32", "bool", "complex64", "U3", "S2",
                                    "float16", "V4", "uint8"]))


def _npz_bytes(members: dict, compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **members)
    return buf.getvalue()


@st.composite
def input_files(draw) -> bytes:
    kind = draw(st.sampled_from(["npz", "npz", "npz", "truncated", "flipped", "npy", "random", "zip", "pickled",
                                 "positional"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, draw(arrays))
        return buf.getvalue()
    if kind == "zip":  # a zip archive with members that are not .npy arrays, or .npy with a broken header
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for member in draw(st.lists(st.sampled_from(["x.npy", "mask.npy", "readme.txt", "m.npy"]), max_size=3,
                                        unique=True)):
                z.writestr(member,
                           draw(st.one_of(st.binary(max_size=200),
                                          st.binary(max_size=60).map(lambda b: b"\x93NUMPY\x01\x00" + b))))
        return buf.getvalue()
    if kind == "pickled":
        buf = io.BytesIO()
        np.savez(buf, x=np.array([{"a": 1}, None], dtype=object))
        return buf.getvalue()
    if kind == "positional":
        n = draw(st.integers(0, 3))
        return _npz_bytes({f"arr_{i}": draw(arrays) for i in range(n)}, draw(st.booleans()))
    members = draw(st.dictionaries(names, arrays, max_size=3))
    right = {s["name"]: np.ones(s["shape"], s["dtype"]) for s in draw(st.sampled_from([SPECS, SPECS[:1]]))}
    members = draw(st.sampled_from([members, right, right, {**members, **right}]))
    data = _npz_bytes(members, draw(st.booleans()))
    if kind == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "flipped":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        return bytes(b)
    return data


@FUZZ
@given(input_files(), st.sampled_from([".npz", ".npy", ""]), st.sampled_from([SPECS, SPECS[:1]]))
def test_fuzz_run_inputs_loader(fuzz_dir, data, suffix, specs):
    path = fuzz_dir / f"inputs{suffix}"
    path.write_bytes(data)
    try:
        loaded = load_inputs(path, specs)
    except HwcompError as e:
        one_line(e)
        return
    assert len(loaded) == len(specs)
    for a, s in zip(loaded, specs):
        assert isinstance(a, np.ndarray) and list(a.shape) == s["shape"] and str(a.dtype) == s["dtype"]
    event("ok")
