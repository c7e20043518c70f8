"""The same sweep on the local executor and on a local Ray cluster: wall time of each, same results.

A real Ray head on 127.0.0.1 (`--num-cpus`, default 2: this machine's cores), started in a process
session of its own and ended by id (tests/ray_cluster.py). Each round runs the sweep once on each
executor, alternating which goes first, each into a fresh run store (so both compute everything);
the CLI is the driver (`python -m core sweep ... --executor ray`). Reports the wall time of each
round and the ratio per round, and checks that both executors produced the same points (run ids,
compression keys, accuracies, sizes).

    python bench/ray_sweep.py                  # ~4 min; writes bench/results/ray_sweep.{json,md}
    python bench/ray_sweep.py --smoke          # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.ray_cluster import local_ray_cluster

FULL = ["--dataset", "mnist-5k", "--epochs", "3", "--reg", "binary", "--lam", "0", "0.02", "--seed", "0", "1",
        "--method", "binarize", "pq", "-d", "4", "8", "-k", "16"]  # fmt: skip
SMOKE = ["--dataset", "digits", "--hidden", "32", "16", "--epochs", "1", "--reg", "binary", "--lam", "0", "0.05",
         "--method", "binarize", "pq", "-d", "4", "-k", "8"]  # fmt: skip


def sweep(args: list[str], store: Path, extra: list[str]) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "core", "sweep", *args, "--cache-dir", str(store), "--json", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed: {proc.stderr.strip()[-500:]}")
    rows = json.loads(proc.stdout)["rows"]
    return seconds, sorted((r["run_id"], r["key"], r["accuracy"], r["fc_bits"], r["file_bytes"]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = SMOKE if args.smoke else FULL
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, local_ray_cluster(Path(tmp) / "ray.log", args.num_cpus) as cluster:
        ray_flags = ["--executor", "ray", "--ray-address", cluster.address]
        reference = None
        for index in range(1 if args.smoke else args.rounds):
            order = [("local", []), ("ray", ray_flags)]
            if index % 2:
                order.reverse()  # alternate which goes first
            times = {}
            for name, extra in order:
                seconds, points = sweep(grid, Path(tmp) / f"{name}-{index}", extra)
                times[name] = seconds
                reference = reference or points
                if points != reference:
                    raise SystemExit(f"round {index}: the {name} executor's points differ")
            rounds.append({"first": order[0][0], **{k: round(v, 2) for k, v in times.items()},
                           "ray_over_local": round(times["ray"] / times["local"], 3)})  # fmt: skip
            print(json.dumps(rounds[-1]), flush=True)
    ratios = [r["ray_over_local"] for r in rounds]
    result = {
        "sweep": " ".join(grid),
        "points": len(reference or []),
        "identical_results": True,
        "ray_cluster_cpus": args.num_cpus,
        "rounds": rounds,
        "median_ray_over_local": statistics.median(ratios),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
    }
    (out / "ray_sweep.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# The same sweep, local executor and a local Ray cluster ({result['machine']})",
        "",
        f"`python -m core sweep {result['sweep']}`: {result['points']} points, identical on both executors "
        f"(run ids, keys, accuracies, sizes). Ray: a head on 127.0.0.1 with {args.num_cpus} CPUs, "
        f"each task with the torch threads (and CPUs) a local job uses, so the numbers match bit for bit.",
        "",
        "| round | first | local (s) | ray (s) | ray / local |",
        "|---|---|---|---|---|",
        *[
            f"| {i + 1} | {r['first']} | {r['local']} | {r['ray']} | {r['ray_over_local']} |"
            for i, r in enumerate(rounds)
        ],
        "",
        f"Median ray / local: {result['median_ray_over_local']} (spread {min(ratios)} to {max(ratios)}).",
    ]
    (out / "ray_sweep.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
