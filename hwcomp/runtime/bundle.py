"""Deploy bundles: what a board needs to run an artifact, and nothing more."""

from __future__ import annotations

import io
import tarfile
from importlib import resources
from pathlib import Path

from ..artifact import LIB, MANIFEST, REFERENCE, WEIGHTS, Artifact

INSTRUCTIONS = """\
hwcomp deploy bundle: {name}
target: {target} ({description})

On the device (Python 3 with numpy and the TVM runtime; libtvm_compiler.so is not needed):
    pip install numpy apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1   # or the runtime-only copy
    tar xzf {bundle} && cd {name}
    python3 run_model.py                 # runs the stored example, checks it, prints latency
    python3 run_model.py --inputs in.npz --output out.npz

Or drive it from the host over TVM RPC (start `python -m tvm.exec.rpc_server` on the device):
    hwcomp bench {name} --device rpc://DEVICE_IP:9090
"""


def make_bundle(artifact: Artifact, bundle: str | Path) -> Path:
    """Write ``bundle`` (.tar.gz): library, weights, manifest, reference, runner and README."""
    bundle = Path(bundle)
    name = artifact.path.name
    t = artifact.target
    runner = (resources.files("hwcomp.runtime") / "standalone_runner.py").read_bytes()
    readme = INSTRUCTIONS.format(name=name, target=t["name"], description=t["description"],
                                 bundle=bundle.name).encode()
    with tarfile.open(bundle, "w:gz") as tf:
        for f in (LIB, WEIGHTS, MANIFEST, REFERENCE):
            if (artifact.path / f).is_file():
                tf.add(artifact.path / f, arcname=f"{name}/{f}")
        for fname, data, mode in (("run_model.py", runner, 0o755), ("README.txt", readme, 0o644)):
            info = tarfile.TarInfo(f"{name}/{fname}")
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return bundle
