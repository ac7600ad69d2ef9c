"""Run every benchmark, print one table, and write benchmarks/results.json.

Usage: ``python benchmarks/run_all.py [--quick] [NAME ...]`` where NAME picks
benchmarks by module suffix (``metrics``, ``sliding_window``, ``training``, ``channels_last``,
``grading``).
"""

from __future__ import annotations

import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import torch  # noqa: E402

BENCHMARKS = ("metrics", "sliding_window", "training", "channels_last", "grading")


def _format(value: object) -> str:
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """Print rows (dicts) as an aligned text table, one column per key seen."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    chosen = [a for a in argv if not a.startswith("--")] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "quick": quick,
        "benchmarks": {},
    }
    for name in chosen:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        start = time.perf_counter()
        rows = module.run(quick=quick)
        print(f"\n== {name} ({time.perf_counter() - start:.1f} s) ==")
        print_table(rows)
        results["benchmarks"][name] = rows
    out = ROOT / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
