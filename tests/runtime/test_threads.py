"""hwcomp runs TVM's CPU kernels on every CPU it may use (TVM alone would start half: it assumes SMT)."""

import os
import subprocess
import sys


def test_thread_pool_uses_every_allowed_cpu():
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = "import hwcomp, tvm; print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == len(os.sched_getaffinity(0))
    env["TVM_NUM_THREADS"] = "1"  # the user's setting wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == 1
