"""`resnetlab download cifar10`: fetch an official CIFAR archive (needs internet)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    s = sub.add_parser("download", help="fetch an official CIFAR archive (needs internet)")
    s.add_argument("dataset", choices=["cifar10", "cifar100"], help="the data set to fetch")
    s.add_argument("--format", choices=["binary", "python"], default="binary",
                   help="the official archive to fetch: the binary version or the Python (pickle) one")
    s.add_argument("--data-dir", default=None, help="where to put it (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--url", default=None, help="mirror URL (file:// works)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.cifar import download, resolve_data_root
    fmt = "py" if args.format == "python" else "bin"
    path = download(f"{args.dataset}-{fmt}", resolve_data_root(args.data_dir), url=args.url)
    print(f"{args.dataset} ready in {path}")
