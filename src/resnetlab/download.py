"""The one HTTP(S)/file downloader: resumable, length-checked, hash-checked, atomic.

Used for the CIFAR archives and for torchvision's published weights. A download lands in
`<target>.part`, is continued with a Range request after an interruption, is refused when the body
ends before its announced length, and becomes `<target>` (one rename) only after its digest matched.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import UserError


def file_digest(path: Path | str, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest_ok(path: Path, digest: str | None, algo: str) -> bool:
    """True when no digest is asked for, or the file's digest equals it (a shorter digest is a prefix,
    as in torchvision's file names)."""
    return digest is None or file_digest(path, algo).startswith(digest.lower())


def fetch(url: str, target: Path, digest: str | None = None, algo: str = "sha256", timeout: float = 30.0,
          progress: bool = True, offline_hint: str = "") -> Path:
    """Download url to target (atomically) unless target already exists with the right digest."""
    target = Path(target)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc) \
            or any(c.isspace() for c in url):
        raise UserError(f"{url!r} is not a valid URL; use http://, https:// or file://")
    if target.is_file() and _digest_ok(target, digest, algo):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for _ in range(2):  # a second pass only after a complete-but-wrong .part was discarded (HTTP 416)
        offset = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            _transfer(req, part, offset, timeout, progress, url)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:
                # Range not satisfiable: the .part file is already complete (or longer than the file).
                if _digest_ok(part, digest, algo):
                    break
                part.unlink()
                continue
            raise UserError(f"cannot download {url} (HTTP {e.code} {e.reason}); {offline_hint}".rstrip("; "))
        except (urllib.error.URLError, OSError, TimeoutError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(e, (urllib.error.URLError, TimeoutError)) or "timed out" in str(reason):
                raise UserError(f"cannot download {url} ({reason}); offline? {offline_hint}".rstrip()) from None
            raise UserError(f"cannot download {url} ({reason})") from None
        break
    if not _digest_ok(part, digest, algo):
        actual = file_digest(part, algo)
        part.unlink()
        raise UserError(f"{url}: downloaded file has {algo} {actual}, expected {digest}; removed it, try again")
    os.replace(part, target)
    return target


def _transfer(req: urllib.request.Request, part: Path, offset: int, timeout: float, progress: bool,
              url: str) -> None:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", 200) or 200
        resumed = bool(offset) and status == 206
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = 0
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=expected, initial=0, unit="B", unit_scale=True, disable=not progress, leave=False,
                desc=part.name.removesuffix(".part")) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if expected is not None and got < expected:
        raise OSError(f"the transfer ended after {got} of {expected} bytes; run again to resume")
