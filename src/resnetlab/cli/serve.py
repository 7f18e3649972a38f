"""`resnetlab serve CKPT`: the model behind HTTP, with a web page at / (needs the [serve] extra)."""
from __future__ import annotations

import argparse

from ..serving.settings import ServeSettings


def add_parser(sub) -> None:
    d = ServeSettings()
    s = sub.add_parser("serve", help="serve a checkpoint over HTTP (API, web page, metrics)")
    s.add_argument("checkpoint", help="a .safetensors checkpoint or run folder; an .onnx file with --backend onnx")
    s.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    s.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    s.add_argument("--device", default="cpu", help="torch backend: cpu, cuda, cuda:N, mps, auto")
    s.add_argument("--max-batch", type=int, default=d.max_batch, help="images per forward pass (1: no batching)")
    s.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    s.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="request body limit")
    s.add_argument("--max-files", type=int, default=d.max_files, help="images per request")
    s.add_argument("--no-access-log", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..serving.server import serve
    settings = ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_body_mb=args.max_body_mb, max_files=args.max_files)
    serve(args.checkpoint, args.backend, args.device, settings, access_log=not args.no_access_log)
