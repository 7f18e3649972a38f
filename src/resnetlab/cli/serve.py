"""`resnetlab serve CKPT` or `serve --models DIR`: models behind HTTP, with a web page at / and a management API
(needs the [serve] extra)."""
from __future__ import annotations

import argparse

from ..serving.settings import ServeSettings


def add_parser(sub) -> None:
    d = ServeSettings()
    s = sub.add_parser("serve", help="serve a checkpoint, or a repository of models and versions, over HTTP (API, "
                       "web page, metrics, management)")
    s.add_argument("checkpoint", nargs="?", default=None,
                   help="a .safetensors checkpoint or run folder; an .onnx file with --backend onnx (or --models)")
    s.add_argument("--models", metavar="DIR", default=None,
                   help="a model repository: DIR/<name>/<version>/ each holding one checkpoint (.safetensors or "
                   ".onnx), DIR/<name>/config.yaml optional (max_batch, max_wait_ms, max_in_flight, default_version)")
    s.add_argument("--reload", choices=("explicit", "poll"), default=d.reload,
                   help="how versions change: explicit (the management API loads and unloads them) or poll (the "
                   "repository is scanned: new and changed versions load, removed ones unload)")
    s.add_argument("--poll-s", type=float, default=d.poll_s, help="with --reload poll: seconds between scans")
    s.add_argument("--default-model", default=None, metavar="NAME",
                   help="the model /v1/predict answers with (default: the first by name)")
    s.add_argument("--admin-key-file", default=None,
                   help="management API keys, one per line (or $RESNETLAB_ADMIN_KEY); without one /admin/ is off")
    s.add_argument("--max-in-flight", type=int, default=d.max_in_flight,
                   help="requests one model handles at once; more get 503 (a model's config.yaml may set its own)")
    s.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    s.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run the checkpoint in PyTorch or ONNX Runtime (an .onnx file is always ONNX Runtime)")
    s.add_argument("--device", default="cpu", help="torch backend: cpu, cuda, cuda:N, mps, auto")
    s.add_argument("--max-batch", type=int, default=d.max_batch, help="images per forward pass (1: no batching)")
    s.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    s.add_argument("--exact-batches", action="store_true",
                   help="run each forward pass at its batch's size; by default a batch is padded to the next of "
                   "1, 2, 4, 8, 16, 24 ... --max-batch, so the model's kernels are all built at start and memory "
                   "stays flat")
    s.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="request body limit")
    s.add_argument("--max-files", type=int, default=d.max_files, help="images per request")
    s.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels,
                   help="all images of one request together, read from their headers before decoding")
    s.add_argument("--explain-max-pixels", type=int, default=d.explain_max_pixels,
                   help="per image explained by /v1/explain (its maps are kept at the image's own size)")
    s.add_argument("--api-key-file", default=None, help="API keys, one per line (re-read when it changes); or "
                   "$RESNETLAB_API_KEY. Required on /v1/* and /metrics as 'Authorization: Bearer KEY' or 'X-API-Key'")
    s.add_argument("--no-auth", action="store_true", help="allow binding a non-loopback address without a key")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="Host header name to serve (repeatable; default on loopback: the loopback names)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin call the API (repeatable; default: none)")
    s.add_argument("--no-docs", action="store_true", help="no /docs and /openapi.json")
    s.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s,
                   help="close connections that do not finish a request's headers in time")
    s.add_argument("--read-timeout-s", type=float, default=d.read_timeout_s, help="408 when a body takes longer")
    s.add_argument("--no-access-log", action="store_true", help="do not log each request")
    s.set_defaults(func=run, usage_error=s.error)


def run(args: argparse.Namespace) -> None:
    if (args.checkpoint is None) == (args.models is None):
        args.usage_error("give a checkpoint or --models DIR (one of them)")
    from ..serving.server import serve
    settings = ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             exact_batches=args.exact_batches,
                             max_body_mb=args.max_body_mb, max_files=args.max_files,
                             max_request_pixels=args.max_request_pixels,
                             explain_max_pixels=args.explain_max_pixels, api_key_file=args.api_key_file,
                             no_auth=args.no_auth, allowed_hosts=args.allowed_host, cors_origins=args.cors_origin,
                             docs=not args.no_docs, header_timeout_s=args.header_timeout_s,
                             read_timeout_s=args.read_timeout_s, reload=args.reload, poll_s=args.poll_s,
                             default_model=args.default_model, admin_key_file=args.admin_key_file,
                             max_in_flight=args.max_in_flight)
    import signal
    # uvicorn handles SIGTERM itself (stop accepting, finish what is in flight) and re-raises it once shut down:
    # the process then ends as a SIGTERM'd server does, not as an interrupted run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    serve(args.checkpoint, args.backend, args.device, settings, access_log=not args.no_access_log, models=args.models)
