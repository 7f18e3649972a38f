"""Start the service: open the models (a checkpoint, or a repository of models and versions), bind, run uvicorn
until SIGINT/SIGTERM.

On SIGTERM uvicorn stops accepting connections, lets the requests in flight finish (up to
graceful_timeout_s), then the app's shutdown drains the batcher: nothing accepted goes unanswered.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

from ..errors import UserError
from ..weights import resolve_checkpoint
from .settings import ServeSettings


def serving_modules():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401  (metrics)
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn
    except ImportError:
        raise UserError("serving needs fastapi, uvicorn, python-multipart and prometheus-client: pip install "
                        "'resnetlab[serve]'") from None
    return uvicorn


def served_file(checkpoint: str, backend: str) -> Path:
    """The file `serve CKPT` runs. torch: a .safetensors checkpoint (or a run folder's). onnx: a .onnx file, or
    the .onnx that `resnetlab export` wrote beside the given checkpoint."""
    path = Path(checkpoint)
    if backend == "onnx" and path.suffix != ".onnx":
        path = resolve_checkpoint(path) if path.is_dir() else path
        sibling = path.with_suffix(".onnx")
        if not sibling.is_file():
            raise UserError(f"{sibling}: no ONNX export beside the checkpoint; run `resnetlab export {checkpoint}` "
                            "first (or pass the .onnx file)")
        return sibling
    if backend == "torch" and path.suffix == ".onnx":
        raise UserError(f"{path}: an ONNX file needs --backend onnx")
    return path if path.suffix == ".onnx" else resolve_checkpoint(path)


def open_hub(checkpoint: str | None, models: str | None, backend: str, device: str, settings: ServeSettings,
             log=print):
    """The models to serve, opened and checked (one line when nothing can serve): a repository folder, or one
    checkpoint as a repository of one."""
    from .hub import ModelHub
    from .metrics import Metrics
    from .repository import FolderRepository, SingleCheckpoint, name_for_checkpoint
    if models is not None:
        repo = FolderRepository(models, backend)
    else:
        repo = SingleCheckpoint(served_file(checkpoint, backend), name_for_checkpoint(checkpoint))
    hub = ModelHub(repo, settings, Metrics(), device, log=lambda line: log(line, flush=True))
    hub.preload()
    return hub


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the socket
    # says it is TCP; without it a keep-alive response written in two parts waits ~40 ms for the
    # client's delayed ACK (Nagle), measured as 45 ms for /healthz
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with one more timer: a connection must complete each request's headers within
    `seconds` of connecting or of its previous response (uvicorn itself times out only idle keep-alive
    connections, and any byte — one every few seconds — resets that timer; a connection that never sends
    anything is never closed)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # the request line and headers did not arrive in time

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # headers complete; the body has the app's read timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A request HTTP itself refuses (a NUL in a header, two Host headers, a malformed line) gets the
            service's error shape, {"detail": reason}, not uvicorn's plain text."""
            body = json.dumps({"detail": f"malformed HTTP request ({msg.rstrip('.').lower()})"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return HeaderTimeoutProtocol


def serve(checkpoint: str | None, backend: str = "torch", device: str = "cpu", settings: ServeSettings | None = None,
          access_log: bool = True, log=print, models: str | None = None) -> None:
    uvicorn = serving_modules()
    settings = settings or ServeSettings()
    settings.validate()
    hub = open_hub(checkpoint, models, backend, device, settings, log)
    from .app import create_app
    app = create_app(hub, settings)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    for name, model in sorted(hub.models.items()):
        for v, sv in sorted(model.versions.items()):
            clf = sv.clf
            log(f"serving {name} version {v}{' (default model)' if name == hub.default_model else ''}: "
                f"{clf.metadata.arch} ({len(clf.classes)} classes, backend {clf.backend}) from {sv.files.path}")
    if models is not None:
        log(f"model repository {models}: "
            f"{'scanned every ' + format(settings.poll_s, 'g') + ' s' if settings.reload == 'poll' else 'versions change through the management API (/admin/)'}")
    docs = f"   docs: http://{shown}:{port}/docs" if settings.docs else ""
    log(f"page: http://{shown}:{port}/   API: http://{shown}:{port}/v1/predict{docs}", flush=True)
    keys = len(app.state.service.keys.keys())
    admin = len(app.state.service.admin_keys.keys())
    log(f"access: {f'{keys} API key(s) required on /v1/* and /metrics' if keys else 'no API key (open)'}; "
        f"management API {f'on ({admin} admin key(s))' if admin else 'off (no admin key)'}; hosts "
        f"{', '.join(sorted(settings.host_names())) if settings.host_names() else 'any'}"
        f"{'; CORS for ' + ', '.join(settings.cors_origins) if settings.cors_origins else ''}", flush=True)
    config = uvicorn.Config(app, log_level="info", access_log=access_log, http=header_timeout_protocol(
                                settings.header_timeout_s), server_header=False,
                            timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                            timeout_graceful_shutdown=int(settings.graceful_timeout_s))
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            service.begin_shutdown()  # uploads still arriving end now, with 503, instead of holding the exit
            super().handle_exit(sig, frame)

    Server(config).run(sockets=[sock])
