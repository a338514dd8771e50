"""End-to-end compile → run for the host CPU, against PyTorch (tolerances stated per test)."""

import numpy as np
import torch

import hwcomp
from hwcomp.models import MLP, SmallCNN, randomize_batchnorm, tiny_bert


def _check_against_torch(art, model, inputs, rtol, atol):
    with torch.no_grad():
        ref = model(*inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    out = art.run([x.numpy() for x in inputs])
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.numpy(), rtol=rtol, atol=atol)


def test_mlp_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, 128, 10).eval()
    art = hwcomp.compile(model, "host", tmp_path / "mlp", example_inputs=(torch.randn(4, 64),))
    assert art.fidelity["max_abs_err"] < 1e-4 and art.fidelity["min_cosine"] > 0.99999
    # fresh inputs, not the ones the fidelity report used
    _check_against_torch(art, model, (torch.randn(4, 64),), rtol=1e-4, atol=1e-5)


def test_cnn_with_batchnorm_and_pooling(tmp_path):
    torch.manual_seed(1)
    model = randomize_batchnorm(SmallCNN(width=8)).eval()
    art = hwcomp.compile(model, "host", tmp_path / "cnn", example_inputs=(torch.randn(2, 3, 16, 16),))
    assert art.fidelity["max_abs_err"] < 1e-4
    _check_against_torch(art, model, (torch.randn(2, 3, 16, 16),), rtol=1e-4, atol=1e-5)


def test_tiny_bert_from_transformers_config(tmp_path):
    model = tiny_bert(layers=2, hidden=32, heads=2, vocab=100)
    ids = torch.randint(0, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.int64)
    mask[0, 12:] = 0  # padding must be masked out exactly as in PyTorch
    art = hwcomp.compile(model, "host", tmp_path / "bert", example_inputs=(ids, mask))
    assert art.fidelity["min_cosine"] > 0.99999
    _check_against_torch(art, model, (torch.randint(0, 100, (1, 16)), mask), rtol=1e-3, atol=1e-4)


def test_artifact_reload_and_archive(tmp_path):
    model = MLP(16, 32, 4).eval()
    x = torch.randn(2, 16)
    art = hwcomp.compile(model, "host", tmp_path / "a", example_inputs=(x,))
    archive = art.pack(tmp_path / "a.tar.gz")
    for again in (hwcomp.load(tmp_path / "a"), hwcomp.load(archive)):
        np.testing.assert_allclose(again.run({"x": x.numpy()})[0], model(x).detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
    m = again.manifest
    assert m["target"]["name"] == "host" and m["inputs"][0] == {"name": "x", "shape": [2, 16], "dtype": "float32"}
    assert set(m["files"]) == {"model.so", "weights.npz", "reference.npz"}


def test_artifact_rebuilt_in_place_runs_its_own_code(tmp_path):
    """A model.so replaced at a path this process loaded before (the dynamic loader would hand back the
    old library, by path or by a reused inode) still runs the new model."""
    import shutil

    x = torch.randn(4, 16)
    first = torch.nn.Sequential(torch.nn.Linear(16, 32)).eval()
    second = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    assert hwcomp.compile(first, "host", tmp_path / "a", example_inputs=(x,)).run([x.numpy()])[0].shape == (4, 32)
    shutil.rmtree(tmp_path / "a")
    art = hwcomp.compile(second, "host", tmp_path / "a", example_inputs=(x,))
    _check_against_torch(art, second, (x,), rtol=1e-5, atol=1e-6)
    _check_against_torch(hwcomp.load(tmp_path / "a"), second, (x,), rtol=1e-5, atol=1e-6)


def test_default_schedules_cover_matmul_and_conv(host):
    """Every heavy PrimFunc gets a schedule from the default rules (none left as scalar loops)."""
    import tvm

    from hwcomp.build import bind_weights, finalize_weights, schedule
    from hwcomp.frontend import load_model

    model = randomize_batchnorm(SmallCNN(width=8)).eval()
    im = load_model(model, (torch.randn(1, 3, 16, 16),))
    mod, _ = finalize_weights(bind_weights(im.mod, im.params))
    mod = schedule(mod, host)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    heavy = [n for n in funcs if "conv2d" in n or "matmul" in n]
    assert heavy
    unscheduled = [n for n in heavy if not funcs[n].attrs or "tirx.is_scheduled" not in funcs[n].attrs]
    assert not unscheduled


def test_artifact_without_output_dir_is_removed_with_it():
    """``compile`` with no output directory writes into a temporary one that goes with the returned
    Artifact (it had stayed behind, one per call); the artifact works while it is held."""
    import gc

    model, x = MLP(8, 16, 4).eval(), torch.randn(2, 8)
    art = hwcomp.compile(model, "host", example_inputs=(x,))
    path = art.path
    assert (path / "manifest.json").is_file()
    with torch.no_grad():
        np.testing.assert_allclose(art.run([x.numpy()])[0], model(x).numpy(), rtol=1e-5, atol=1e-5)
    del art
    gc.collect()
    assert not path.exists() and not path.parent.exists()
