"""Dynamic sequence length: one artifact for every length vs one static artifact per length.

    python bench/dynamic.py [--model distilbert] [--size realistic] [--lengths 32,128,384]
                            [--rounds 15] [--number 3] [--max-len 512] [--no-db]

Compiles ``hwcomp.zoo.build(model, size)`` once with the sequence length dynamic (``seq`` in
1..``--max-len``, shared by ``input_ids`` and ``attention_mask``) and once static at each length
(default untuned schedules + the shipped records, as ``hwcomp compile`` does), then at each length
times the dynamic and the static artifact round-robin (:func:`hwcomp.runtime.measure.time_round_robin`:
each round times both in turn, medians over the rounds) on the same inputs, and checks both against
PyTorch. Goal: dynamic / static <= 1.25 at every length. At a length that misses it, both artifacts
are profiled per kernel (:func:`hwcomp.runtime.kernel_profile.profile_kernels`) and the kernels whose time
grew most are printed and stored. Writes ``bench/results/dynamic.json``; the last line is
``dynamic_worst_ratio=<x>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

GOAL = 1.25


def _inputs(vocab: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, n), generator=g)
    mask = torch.ones(1, n, dtype=torch.long)
    mask[:, -max(1, n // 8):] = 0  # right padding
    return [ids, mask]


def _kernel_diff(dyn_prof, stat_prof, top: int = 8) -> list[dict]:
    """Kernels by the time the dynamic artifact spends more than the static one (matched by name)."""
    stat = {k.name: k for k in stat_prof.kernels}
    rows = []
    for k in dyn_prof.kernels:
        s = stat.get(k.name)
        rows.append({"kernel": k.name, "calls": k.calls, "dynamic_ms": k.ms, "static_ms": s.ms if s else None,
                     "extra_ms": k.ms - (s.ms if s else 0.0)})
    rows.sort(key=lambda r: -r["extra_ms"])
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="distilbert")
    ap.add_argument("--size", default="realistic", choices=["tiny", "realistic"])
    ap.add_argument("--lengths", default="32,128,384")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=3)
    ap.add_argument("--no-db", action="store_true",
                    help="compile both without the target's tuning records (isolates what records that "
                         "match only static shapes contribute); writes dynamic_nodb.json")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]

    import hwcomp
    from hwcomp import zoo
    from hwcomp.frontend import DynamicDim
    from hwcomp.runtime.measure import prepared_call, time_round_robin
    from hwcomp.runtime.kernel_profile import profile_kernels

    m = zoo.build(args.model, args.size, max_positions=args.max_len if args.size == "tiny" else None)
    vocab = 1000  # ids below every config's vocabulary
    names = ["input_ids", "attention_mask"]
    if len(m.inputs) != 2:
        raise SystemExit(f"{args.model}: this bench drives encoders (input_ids, attention_mask)")
    work = Path(tempfile.mkdtemp(prefix="hwcomp-bench-dynamic-"))
    print(f"{args.model} ({args.size}, {m.n_params / 1e6:.1f} M params), lengths {lengths}, "
          f"dynamic seq in 1..{args.max_len}; threads: TVM {__import__('os').environ.get('TVM_NUM_THREADS')}")
    try:
        seq = DynamicDim("seq", 1, args.max_len)
        t0 = time.perf_counter()
        dyn = hwcomp.compile(m.module, "host", work / "dynamic", example_inputs=tuple(_inputs(vocab, 128)),
                             options=hwcomp.CompileOptions(dynamic={n: {1: seq} for n in names},
                                                           use_default_database=not args.no_db))
        compile_s = {"dynamic": time.perf_counter() - t0}
        print(f"compiled dynamic in {compile_s['dynamic']:.0f} s; fidelity {dyn.fidelity['max_abs_err']:.3g}",
              flush=True)
        static = {}
        for n in lengths:
            t0 = time.perf_counter()
            static[n] = hwcomp.compile(m.module, "host", work / f"static{n}", example_inputs=tuple(_inputs(vocab, n)),
                                       options=hwcomp.CompileOptions(use_default_database=not args.no_db))
            compile_s[f"static{n}"] = time.perf_counter() - t0
            print(f"compiled static {n} in {compile_s[f'static{n}']:.0f} s", flush=True)

        rows, profiles = [], {}
        for n in lengths:
            ins = _inputs(vocab, n, seed=n)
            arrays = [t.numpy() for t in ins]
            with torch.no_grad():
                ref = m.module(*ins).numpy()
            errs = {k: float(np.abs(a.run(arrays)[0] - ref).max()) for k, a in (("dynamic", dyn),
                                                                                 ("static", static[n]))}
            calls = [prepared_call(a.vm(), a.device(), a.device_args(arrays)) for a in (dyn, static[n])]
            d, s = time_round_robin(calls, number=args.number, rounds=args.rounds)
            ratio = d.median / s.median
            rows.append({"length": n, "dynamic_ms": d.median, "static_ms": s.median, "ratio": ratio,
                         "goal_met": ratio <= GOAL, "dynamic_err": errs["dynamic"], "static_err": errs["static"],
                         "dynamic_samples_ms": d.samples_ms, "static_samples_ms": s.samples_ms})
            print(f"length {n}: dynamic {d.median:.2f} ms, static {s.median:.2f} ms, ratio {ratio:.3f} "
                  f"(max abs err vs torch: dynamic {errs['dynamic']:.2g}, static {errs['static']:.2g})", flush=True)
            if ratio > GOAL:
                dp, sp = profile_kernels(dyn, arrays, runs=3), profile_kernels(static[n], arrays, runs=3)
                diff = _kernel_diff(dp, sp)
                profiles[str(n)] = {"dynamic": dp.to_json(), "static": sp.to_json(), "most_extra": diff}
                print(f"  length {n} misses {GOAL}x; kernels the dynamic artifact spends most extra time in:")
                for r in diff:
                    st = f"{r['static_ms']:.3f}" if r["static_ms"] is not None else "-"
                    print(f"    {r['kernel'][:60]:60s} x{r['calls']:<3d} dyn {r['dynamic_ms']:.3f} ms, "
                          f"static {st} ms")
        print()
        print_table(rows, ["length", "dynamic_ms", "static_ms", "ratio", "goal_met"])
        worst = max(r["ratio"] for r in rows)
        write_results("dynamic_nodb" if args.no_db else "dynamic", {
            "tuning_records": not args.no_db, "model": args.model, "size": args.size, "max_len": args.max_len,
            "goal": GOAL, "rounds": args.rounds, "number": args.number, "compile_s": compile_s, "rows": rows,
            "profiles": profiles, "worst_ratio": worst})
        print(f"dynamic_worst_ratio={worst:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
