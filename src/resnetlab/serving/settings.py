"""Service settings: limits, batching, timeouts and access. Kept apart from the app so the CLI can read the
defaults without importing FastAPI (an optional extra)."""
from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def pass_sizes(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then multiples of 8, up to and including max_batch: padding wastes at most 7 images
    beyond 8 (under load, when batches are large, a small share of the pass)."""
    sizes = [n for n in (1, 2, 4, 8) if n < max_batch] + list(range(16, max_batch, 8))
    return tuple(sizes + [max_batch])


def pass_size_for(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest pass size that holds n images (n <= sizes[-1])."""
    return next(s for s in sizes if s >= n)


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64          # images per forward pass
    max_wait_ms: float = 5.0     # how long the first image of a batch waits for company
    exact_batches: bool = False  # run each pass at its batch's size instead of padding it to a pass size
    max_body_mb: float = 10.0    # request body limit
    max_files: int = 64          # images per request
    max_pixels: int = 40_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 100_000_000  # all images of one request together, from their headers
    explain_max_pixels: int = 4_000_000  # per image explained: Grad-CAM keeps float maps and an overlay at the
                                         # image's own size (a 36-megapixel image took the server to 3.3 GB)
    default_top_k: int = 5
    graceful_timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # a connection must finish sending a request's headers within this
    read_timeout_s: float = 30.0    # ... and its body within this (408 after)
    keep_alive_s: float = 5.0       # an idle keep-alive connection is closed after this
    api_key_file: str | None = None  # one key per line (re-read when the file changes: keys can rotate)
    no_auth: bool = False         # explicitly allow a non-loopback bind without keys
    allowed_hosts: list[str] = field(default_factory=list)  # Host header names; [] = loopback names on loopback
    cors_origins: list[str] = field(default_factory=list)   # origins allowed to call the API from a browser
    docs: bool = True             # /docs and /openapi.json
    max_in_flight: int = 1024     # requests one model handles at once (a model's config.yaml may set its own)
    default_model: str | None = None  # the model /v1/predict answers with (default: the first by name)
    reload: str = "explicit"      # explicit: versions change by the management API; poll: by scanning the folder
    poll_s: float = 15.0          # how often --reload poll scans the repository
    admin_key_file: str | None = None  # management API keys, one per line; or $RESNETLAB_ADMIN_KEY

    @property
    def pass_sizes(self) -> tuple[int, ...] | None:
        """The sizes a forward pass runs at (pass_sizes); None with exact_batches."""
        return self.pass_sizes_for(self.max_batch)

    @property
    def warm_up_sizes(self) -> tuple[int, ...]:
        return self.warm_up_sizes_for(self.max_batch)

    def pass_sizes_for(self, max_batch: int) -> tuple[int, ...] | None:
        return None if self.exact_batches else pass_sizes(max_batch)

    def warm_up_sizes_for(self, max_batch: int) -> tuple[int, ...]:
        """The batch sizes a version's warm-up runs before it serves: every pass size, else 1 and max_batch."""
        return self.pass_sizes_for(max_batch) or tuple(sorted({1, max_batch}))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1e6)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def host_names(self) -> set[str] | None:
        """Host header names accepted (None: any). On loopback, by default only the loopback names: a page
        on another site that rebinds its DNS name to 127.0.0.1 sends its own name and is refused."""
        if self.allowed_hosts:
            return {h.lower() for h in self.allowed_hosts}
        return set(LOOPBACK_NAMES) if self.loopback else None

    def validate(self) -> None:
        from ..errors import UserError
        numbers = {"max_wait_ms": self.max_wait_ms, "max_body_mb": self.max_body_mb,
                   "graceful_timeout_s": self.graceful_timeout_s, "header_timeout_s": self.header_timeout_s,
                   "poll_s": self.poll_s,
                   "read_timeout_s": self.read_timeout_s, "keep_alive_s": self.keep_alive_s}
        for key, value in numbers.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise UserError(f"serve: {key.replace('_', '-')} = {value} must be a finite number")
        checks = {"max_batch": self.max_batch >= 1, "max_wait_ms": 0 <= self.max_wait_ms <= 10_000,
                  "max_body_mb": 0 < self.max_body_mb <= 10_000, "max_files": self.max_files >= 1,
                  "max_pixels": self.max_pixels >= 1, "max_request_pixels": self.max_request_pixels >= 1,
                  "port": 0 <= self.port <= 65535, "default_top_k": self.default_top_k >= 1,
                  "header_timeout_s": self.header_timeout_s > 0, "read_timeout_s": self.read_timeout_s > 0,
                  "keep_alive_s": self.keep_alive_s > 0, "graceful_timeout_s": self.graceful_timeout_s >= 0,
                  "max_in_flight": self.max_in_flight >= 1, "poll_s": self.poll_s >= 0.1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"serve: {bad[0].replace('_', '-')} = {getattr(self, bad[0])} is out of range")
        if self.reload not in ("explicit", "poll"):
            raise UserError(f"serve: reload = {self.reload!r}; choose explicit or poll")
        if self.api_key_file is not None:
            read_keys(self.api_key_file)  # one line now if it is missing or empty
        if self.admin_key_file is not None:
            read_keys(self.admin_key_file)
        if set(self.admin_keys()) & set(self.keys()):
            raise UserError("serve: an admin key is also an API key; the management API needs keys of its own")
        if not self.loopback and not self.no_auth and not self.keys():
            raise UserError(f"serve: binding {self.host} (not loopback) without an API key; pass --api-key-file FILE "
                            f"or set RESNETLAB_API_KEY, or --no-auth to serve it open on purpose")

    def keys(self) -> list[str]:
        """The API keys now: the key file's lines, and $RESNETLAB_API_KEY."""
        keys = read_keys(self.api_key_file) if self.api_key_file else []
        env = os.environ.get("RESNETLAB_API_KEY", "").strip()
        return keys + ([env] if env else [])


    def admin_keys(self) -> list[str]:
        """The management API's keys now: the admin key file's lines, and $RESNETLAB_ADMIN_KEY."""
        keys = read_keys(self.admin_key_file) if self.admin_key_file else []
        env = os.environ.get("RESNETLAB_ADMIN_KEY", "").strip()
        return keys + ([env] if env else [])


def read_keys(path: str | os.PathLike) -> list[str]:
    from ..errors import UserError
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read the API key file ({getattr(e, 'strerror', None) or e})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise UserError(f"{p}: the API key file holds no key (one key per line)")
    return keys
