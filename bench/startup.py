"""Start-up of the command line: wall and CPU time of the commands a user meets most, before and after.

    python bench/startup.py [--pairs 5] [--base 5b9a419] [--out bench/results]

Measured, each as a fresh `python -m core ...` process (wall: perf_counter around it; CPU: the
child's user + system time from getrusage), interleaved A B A B (before, after, before, after...) so
that a machine busy with other work slows both alike; reported as the median of the per-pair ratios
after / before with their spread (min-max):

    train (cached)    `train --dataset mnist-5k --epochs 2 --seed 3 --json` a second time
    compress (cached) `compress RUN --method pq -d 8 -k 256 --json` a second time
    runs (200)        `runs` on a store of 200 run entries
    --help            `python -m core --help`

"Before" is the base commit checked out in a temporary git worktree (the same store format, so both
read the same store); "after" is this checkout. Then the waiters: four identical trainings started
at once on an empty store, total CPU against one training alone plus four cache hits (after only).

Writes startup.json (every measurement) and startup.md (the table) under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAIN = ["train", "--dataset", "mnist-5k", "--epochs", "2", "--seed", "3", "--json"]
COMPRESS = ["--method", "pq", "-d", "8", "-k", "256", "--json"]
GOAL_S = 1.5


def run_timed(code_root: Path, argv: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one `python -m core ARGV` run from `code_root`."""
    env = os.environ | {"COMPRESSION_LAB_OFFLINE": "1", "PYTHONPATH": str(code_root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "core", *argv], cwd=code_root, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} from {code_root} failed: {proc.stderr[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def fill_store(store_root: Path, n_runs: int) -> None:
    """A store of `n_runs` valid run entries: copies of its one trained run under other seeds (each
    a correct entry: its id the hash of its config, its checksum right), for the listing."""
    from core.records import sha256
    from core.store import RunStore, _envelope

    store = RunStore(store_root)
    original = store.list_runs()[0]
    weights = (store_root / "runs" / original.run_id / "model.safetensors").read_bytes()
    seed = 1000
    while len(store.run_ids()) < n_runs:
        cfg = dataclasses.replace(original.config, seed=seed)
        seed += 1
        folder = store_root / "runs" / cfg.run_id()
        if folder.exists():
            continue
        record = original.to_json() | {"run_id": cfg.run_id(), "config": cfg.to_json()}
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "run.json").write_bytes(_envelope(record, sha256(weights), "weights_sha256"))


def interleaved(base: Path, argv: list[str], pairs: int) -> dict:
    rows = []
    for _ in range(pairs):
        b_wall, b_cpu, _ = run_timed(base, argv)
        a_wall, a_cpu, _ = run_timed(ROOT, argv)
        rows.append({"before_wall": b_wall, "before_cpu": b_cpu, "after_wall": a_wall, "after_cpu": a_cpu})

    def summary(kind: str) -> dict:
        ratios = [r[f"after_{kind}"] / r[f"before_{kind}"] for r in rows]
        return {
            "before_median": statistics.median(r[f"before_{kind}"] for r in rows),
            "after_median": statistics.median(r[f"after_{kind}"] for r in rows),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }

    return {"argv": argv, "pairs": rows, "wall": summary("wall"), "cpu": summary("cpu")}


def concurrent_trainings(n: int) -> dict:
    """CPU of `n` identical trainings started at once on an empty store (one trains, the others wait),
    against one training alone on another empty store plus `n` cache hits."""
    env = os.environ | {"COMPRESSION_LAB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "COMPRESSION_LAB_MAX_JOBS": "1"}
    with tempfile.TemporaryDirectory(prefix="startup-waiters-") as tmp:
        alone, together = Path(tmp) / "alone", Path(tmp) / "together"
        one_wall, one_cpu, _ = run_timed(ROOT, [*TRAIN, "--cache-dir", str(alone)])
        hit_cpu = [run_timed(ROOT, [*TRAIN, "--cache-dir", str(alone)])[1] for _ in range(n)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        argv = [sys.executable, "-m", "core", *TRAIN, "--cache-dir", str(together)]
        procs = [
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)
        ]
        outputs = [proc.communicate() for proc in procs]
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if any(proc.returncode != 0 for proc in procs):
            raise RuntimeError(f"a concurrent training failed: {[err[-500:] for _, err in outputs]}")
        cached = sorted(json.loads(out)["cached"] for out, _ in outputs)
    total_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    budget = 1.1 * (one_cpu + sum(hit_cpu))
    return {
        "n": n,
        "one_training_cpu": one_cpu,
        "one_training_wall": one_wall,
        "cache_hit_cpu": hit_cpu,
        "together_cpu": total_cpu,
        "together_wall": wall,
        "trained": cached.count(False),
        "budget_cpu": budget,
        "within_budget": total_cpu <= budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="A B pairs per command")
    parser.add_argument("--base", default="5b9a419", help="the commit measured as 'before'")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip-waiters", action="store_true", help="leave out the four concurrent trainings")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                   capture_output=True)  # fmt: skip
    try:
        store = work / "store"  # the cached train and compress
        listing = work / "listing"  # 200 run entries
        run = json.loads(run_timed(ROOT, [*TRAIN, "--cache-dir", str(store)])[2])
        run_timed(ROOT, ["compress", run["run_id"], *COMPRESS, "--cache-dir", str(store)])
        shutil.copytree(store / "runs", listing / "runs")
        fill_store(listing, 200)
        commands = {
            "train (cached)": [*TRAIN, "--cache-dir", str(store)],
            "compress (cached)": ["compress", run["run_id"], *COMPRESS, "--cache-dir", str(store)],
            "runs (200 entries)": ["runs", "--cache-dir", str(listing)],
            "--help": ["--help"],
        }
        results = {name: interleaved(base, argv, args.pairs) for name, argv in commands.items()}
        waiters = None if args.skip_waiters else concurrent_trainings(4)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    env = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "base": args.base,
        "pairs": args.pairs,
    }
    (out / "startup.json").write_text(json.dumps({"env": env, "commands": results, "waiters": waiters}, indent=1))

    lines = [
        "# Start-up of the command line, before and after",
        "",
        f"`python bench/startup.py --pairs {args.pairs}`; before = commit {args.base} (a temporary worktree), "
        f"after = this checkout; {args.pairs} interleaved pairs (A B A B) a command, each a fresh process; "
        f"medians, and the median of the per-pair ratios after/before with their spread (min-max). "
        f"{env['cpus']} CPUs, load average at the end {', '.join(f'{x:.1f}' for x in env['load_average_at_end'])} "
        f"(other work shared the machine). Goal: each under {GOAL_S} s wall and {GOAL_S} CPU s.",
        "",
        "| command | wall before | wall after | ratio (spread) | CPU before | CPU after | ratio (spread) | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        w, c = r["wall"], r["cpu"]
        met = w["after_median"] < GOAL_S and c["after_median"] < GOAL_S
        lines.append(
            f"| {name} | {w['before_median']:.2f} s | {w['after_median']:.2f} s | {w['ratio_median']:.2f}x "
            f"({w['ratio_min']:.2f}-{w['ratio_max']:.2f}) | {c['before_median']:.2f} s | {c['after_median']:.2f} s | "
            f"{c['ratio_median']:.2f}x ({c['ratio_min']:.2f}-{c['ratio_max']:.2f}) | {'yes' if met else 'no'} |"
        )
    if waiters is not None:
        hits = sum(waiters["cache_hit_cpu"])
        lines += [
            "",
            f"Four identical trainings started at once (after only, `COMPRESSION_LAB_MAX_JOBS=1`): "
            f"{waiters['trained']} trained, the others waited; total CPU {waiters['together_cpu']:.1f} s "
            f"({waiters['together_wall']:.1f} s wall) against one training alone {waiters['one_training_cpu']:.1f} s "
            f"+ four cache hits {hits:.1f} s = {waiters['one_training_cpu'] + hits:.1f} s; "
            f"budget (+10%) {waiters['budget_cpu']:.1f} s: {'within' if waiters['within_budget'] else 'over'}.",
        ]
    (out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
