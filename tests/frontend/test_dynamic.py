"""Dynamic sequence length: one artifact runs every length in its range, matching PyTorch.

A BERT-family encoder (DistilBERT, from a ``.pt2`` exported with ``torch.export.Dim``, compiled
through the CLI's ``--dynamic``) and decoders (GPT-2 with learned positions, Llama with RoPE and
grouped-query attention: ``nn.Module`` through ``CompileOptions.dynamic``), tiny configs with 512
positions, at lengths 7, 128 and 500.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp import zoo
from hwcomp.artifact_files import validate_manifest
from hwcomp.errors import ArtifactError, HwcompError, InputError
from hwcomp.frontend import DynamicDim, parse_dynamic

LENGTHS = (7, 128, 500)
SEQ = DynamicDim("seq", 1, 512)


def _text(vocab: int, n: int, positions: bool, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, n), generator=g)
    mask = torch.ones(1, n, dtype=torch.long)
    mask[:, -3:] = 0  # right padding
    return [ids, mask] + ([torch.arange(n)[None]] if positions else [])


def _check_lengths(art, module, positions: bool) -> None:
    for n in LENGTHS:
        ins = _text(1000, n, positions, seed=n)
        with torch.no_grad():
            ref = module(*ins).numpy()
        out = art.run([t.numpy() for t in ins])[0]
        assert out.shape == ref.shape == (1, n, 64)
        err = float(np.abs(out - ref).max())
        assert err < 1e-4, f"length {n}: max abs err {err}"


# ---- flag parsing -------------------------------------------------------------------------------

def test_parse_dynamic_forms():
    got = parse_dynamic(["seq=1..512", "input_ids:1=seq", "attention_mask:1=seq", "x:0=2..8"])
    assert got == {"input_ids": {1: SEQ}, "attention_mask": {1: SEQ}, "x": {0: DynamicDim("x_0", 2, 8)}}
    assert parse_dynamic(None) == {}


@pytest.mark.parametrize("items, words", [
    (["input_ids:1=0..8"], "1 <= LO"),
    (["input_ids:1=9..8"], "1 <= LO"),
    (["input_ids:1"], "expected"),
    (["input_ids:x=1..8"], "dimension index"),
    (["input_ids:1=seq"], "declare it"),
    (["seq=1..8"], "no INPUT:DIM=seq"),
    (["seq=1..8", "seq=1..9", "a:1=seq"], "declared twice"),
    (["a:1=1..8", "a:1=1..9"], "given twice"),
    (["a:1=1..x"], "LO..HI"),
])
def test_parse_dynamic_errors(items, words):
    with pytest.raises(HwcompError, match=words):
        parse_dynamic(items)


# ---- the encoder: a dynamic .pt2 through the CLI --------------------------------------------------

@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from hwcomp.cli import main

    d = tmp_path_factory.mktemp("dyn-enc")
    m = zoo.build("distilbert", "tiny", max_positions=512)
    seq = torch.export.Dim("seq", min=1, max=512)
    ep = torch.export.export(m.module, m.inputs, dynamic_shapes=({1: seq}, {1: seq}))
    torch.export.save(ep, str(d / "enc.pt2"))
    # the flags name torch's symbol and narrow nothing: the range is the export's
    assert main(["compile", str(d / "enc.pt2"), "-t", "host", "-o", str(d / "out"),
                 "--dynamic", "seq=1..512", "--dynamic", "input_ids:1=seq",
                 "--dynamic", "attention_mask:1=seq"]) == 0
    return hwcomp.load(d / "out"), m, d


def test_encoder_matches_torch_at_every_length(encoder):
    art, m, _ = encoder
    assert art.inputs[0]["shape"] == [1, "seq"] and art.inputs[1]["shape"] == [1, "seq"]
    assert art.dynamic == {"seq": {"min": 1, "max": 512}}
    assert art.outputs[0]["shape"] == [1, "seq", 64]
    assert art.fidelity["max_abs_err"] < 1e-4  # the stored example (length 16), at compile time
    _check_lengths(art, m.module, positions=False)


def test_run_cli_takes_the_length_from_the_inputs(encoder):
    from hwcomp.cli import main

    art, _, d = encoder
    ins = _text(1000, 33, False, seed=1)
    np.savez(d / "in.npz", input_ids=ins[0].numpy(), attention_mask=ins[1].numpy())
    assert main(["run", str(art.path), "--inputs", str(d / "in.npz"), "--output", str(d / "o.npz")]) == 0
    with np.load(d / "o.npz") as z:
        assert z["output0"].shape == (1, 33, 64)
    np.savez(d / "bad.npz", input_ids=ins[0].numpy(), attention_mask=ins[1].numpy()[:, :30])
    assert main(["run", str(art.path), "--inputs", str(d / "bad.npz")]) == 2  # one line, no traceback


def test_inspect_and_bench_cli(encoder, capsys):
    from hwcomp.cli import main

    art, _, _ = encoder
    assert main(["inspect", str(art.path)]) == 0
    out = capsys.readouterr().out
    assert "input      input_ids [1, 'seq'] int64" in out and "dynamic    seq in 1..512" in out
    assert main(["bench", str(art.path), "--repeat", "2"]) == 0  # the stored example's length


def test_inputs_checked_against_the_range_and_each_other(encoder):
    art, _, _ = encoder
    ids = np.zeros((1, 513), np.int64)
    with pytest.raises(InputError, match=r"outside seq's range 1\.\.512"):
        art.run([ids, np.ones_like(ids)])
    with pytest.raises(InputError, match="sharing seq must agree"):
        art.run([np.zeros((1, 8), np.int64), np.ones((1, 9), np.int64)])
    with pytest.raises(InputError, match="compiled for"):
        art.run([np.zeros((2, 8), np.int64), np.ones((2, 8), np.int64)])


def test_manifest_schema_for_symbols(encoder):
    art, _, _ = encoder
    m = json.loads((art.path / "manifest.json").read_text())
    validate_manifest(m, "x")
    bad = json.loads(json.dumps(m))
    bad["inputs"][0]["shape"] = [1, "len"]  # a symbol without a range
    with pytest.raises(ArtifactError, match="symbols of 'dynamic'"):
        validate_manifest(bad, "x")
    bad = json.loads(json.dumps(m))
    bad["dynamic"]["seq"] = {"min": 9, "max": 3}
    with pytest.raises(ArtifactError, match="min <= max"):
        validate_manifest(bad, "x")


# ---- the decoder: an nn.Module through CompileOptions.dynamic ------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama_small"])
def test_decoder_matches_torch_at_every_length(tmp_path, name):
    m = zoo.build(name, "tiny", max_positions=512)
    dyn = {"input_ids": {1: SEQ}, "attention_mask": {1: SEQ}, "position_ids": {1: SEQ}}
    art = hwcomp.compile(m.module, "host", tmp_path / "dec", example_inputs=m.inputs,
                         options=hwcomp.CompileOptions(dynamic=dyn))
    assert [s["shape"] for s in art.inputs] == [[1, "seq"]] * 3
    assert art.fidelity["max_abs_err"] < 1e-4
    _check_lengths(art, m.module, positions=True)


# ---- one-line errors --------------------------------------------------------------------------------

def test_static_pt2_with_dynamic_flag_is_one_line(tmp_path):
    m = zoo.build("distilbert", "tiny", max_positions=512)
    torch.export.save(torch.export.export(m.module, m.inputs), str(tmp_path / "s.pt2"))
    with pytest.raises(HwcompError, match="exported static .* re-export"):
        hwcomp.compile(tmp_path / "s.pt2", "host", tmp_path / "o",
                       options=hwcomp.CompileOptions(dynamic={"input_ids": {1: (1, 512)}}))


def test_separate_symbols_for_one_length_say_how_to_share(tmp_path):
    m = zoo.build("distilbert", "tiny", max_positions=512)
    with pytest.raises(HwcompError, match="give equal dimensions one symbol"):
        hwcomp.compile(m.module, "host", tmp_path / "o", example_inputs=m.inputs,
                       options=hwcomp.CompileOptions(dynamic={"input_ids": {1: (1, 512)},
                                                              "attention_mask": {1: (1, 512)}}))


def test_dynamic_name_not_an_input(tmp_path):
    m = zoo.build("distilbert", "tiny", max_positions=512)
    with pytest.raises(HwcompError, match=r"name input\(s\) \['ids'\]"):
        hwcomp.compile(m.module, "host", tmp_path / "o", example_inputs=m.inputs,
                       options=hwcomp.CompileOptions(dynamic={"ids": {1: SEQ}}))
