"""Start-up time of `pytc --help` against `python -c pass` (goal: ratio <= 5x).

Each command runs in a fresh process several times; medians are compared, so a noisy machine
moves both sides alike. Run: `python bench/startup.py [--runs 15]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "pytc --help": [py, "-m", "pytc.cli", "--help"],
        "pytc --version": [py, "-m", "pytc.cli", "--version"],
        "pytc config show": [py, "-m", "pytc.cli", "config", "show"],
    }
    _median_seconds(cases["pytc --help"], 2)  # warm the file cache / bytecode
    base = None
    print(f"{'command':<20} {'median ms':>10} {'x python':>9}")
    for name, cmd in cases.items():
        t = _median_seconds(cmd, args.runs)
        base = base or t
        print(f"{name:<20} {t * 1e3:>10.1f} {t / base:>9.2f}")
    print("goal: pytc --help <= 5x python -c pass")


if __name__ == "__main__":
    main()
