"""`resnetlab report RUN_DIR`: report.md with curves, confusion matrix and the results table."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    s = sub.add_parser("report", help="write report.md with curves and the results table")
    s.add_argument("run_dir", help="a run folder (of train or finetune) to write report.md and plots into")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..evaluation.report import write_report
    print(f"wrote {write_report(args.run_dir)}")
