"""What the studies' figure scripts share: the repository's shipped runs, and a main that reads
the runs, draws the figure and prints the table."""
from __future__ import annotations

import argparse
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "docs", "reproduction")  # finished runs' metrics, committed
RUNS = os.path.expanduser("~/bnjax-runs/reproduction")


def main(description: str, out: str, load, plot, table, at_least: int = 1,
         needed: str = "", runs: str = RUNS, queue: str = "launch/studies/reproduce.sh") -> None:
    """--runs=FOLDER --out=FILE: rows, missing = load(runs); plot(rows, out); print(table(rows)).
    Fewer than `at_least` rows stop it, saying which runs (`needed`) to train first."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--runs", default=runs)
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    rows, missing = load(os.path.expanduser(args.runs))
    if len(rows) < at_least:
        raise SystemExit(f"need {at_least} or more finished runs of {needed} under {args.runs} "
                         f"(or shipped in {SHIPPED}); found {len(rows)}. Run them with "
                         f"{queue} first.")
    plot(rows, args.out)
    print(table(rows))
    if missing:
        print(f"\nnot finished yet: {', '.join(missing)}")
    print(f"wrote {args.out}")
