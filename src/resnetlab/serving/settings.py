"""Service settings: limits and batching. Kept apart from the app so the CLI can read the defaults
without importing FastAPI (an optional extra)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64          # images per forward pass
    max_wait_ms: float = 5.0     # how long the first image of a batch waits for company
    max_body_mb: float = 10.0    # request body limit
    max_files: int = 64          # images per request
    max_pixels: int = 40_000_000  # per image, checked from its header before decoding
    default_top_k: int = 5
    graceful_timeout_s: float = 30.0

    def validate(self) -> None:
        from ..errors import UserError
        checks = {"max_batch": self.max_batch >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_body_mb": self.max_body_mb > 0, "max_files": self.max_files >= 1,
                  "max_pixels": self.max_pixels >= 1, "port": 0 <= self.port <= 65535,
                  "default_top_k": self.default_top_k >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"serve: {bad[0].replace('_', '-')} = {getattr(self, bad[0])} is out of range")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1e6)
