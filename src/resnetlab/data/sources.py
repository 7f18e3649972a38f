"""Where users' images come from: a class-per-folder tree, a CSV/JSONL manifest, or WebDataset tar shards.

Each source is scanned into a `Listing`: the samples (key, label name, where to read the bytes), the class
names and a fingerprint of everything that decides the decoded pixels (paths, sizes, mtimes; for
downloaded shards their digests). The decoded cache (data.cache) is keyed by the listing's identity and
rebuilt when its fingerprint changes.

- folder: root/<class>/*.png|jpg|jpeg|bmp|webp (torchvision ImageFolder layout), class names sorted.
- manifest: a .csv with a `path,label` header, or a .jsonl of {"path": ..., "label": ...}; paths relative
  to the manifest's folder.
- shards: tar files in the WebDataset layout (members `KEY.jpg|png|…` + `KEY.cls|txt`), given as a folder
  of .tar files, one .tar, or a brace pattern `train-{000000..000099}.tar` (local, or http(s) URLs, which
  are downloaded once into the cache folder).

Manifests and shards share one label rule (class_label, class_order): a label is a non-empty printable class
name of at most MAX_LABEL characters, or an integer; integers are ordered by value, names as text.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import UserError
from ..schema import shown
from ..decoding import EXTENSIONS

SOURCE_KINDS = ("folder", "manifest", "shards")


@dataclass(frozen=True)
class Sample:
    """One image: `key` names it in reports and the cache index; bytes are at `file` (a tar `member` when
    the source is shards)."""
    key: str
    label: str
    file: str
    member: str | None = None


@dataclass
class Listing:
    kind: str                 # folder | manifest | shards
    identity: str             # what the source is (absolute path or URLs): names its cache
    samples: list[Sample]
    classes: list[str]
    fingerprint: str          # changes whenever a file the pixels come from changes

    def label_indices(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.samples]


def source_kind(path: str) -> str:
    p = str(path)
    if p.startswith(("http://", "https://")) or p.endswith(".tar") or "{" in p:
        return "shards"
    if p.endswith((".csv", ".jsonl")):
        return "manifest"
    if Path(p).is_dir() and any(Path(p).glob("*.tar")) and not any(d.is_dir() for d in Path(p).iterdir()):
        return "shards"
    return "folder"


def scan(path: str | Path, cache_root: Path | None = None, progress: bool = True) -> Listing:
    """The listing of any source (its kind from the path: see the module docstring)."""
    kind = source_kind(str(path))
    if kind == "shards":
        return scan_shards(str(path), cache_root, progress)
    if kind == "manifest":
        return scan_manifest(Path(path))
    return scan_folder(Path(path))


def _stat_digest(h: "hashlib._Hash", path: Path, key: str) -> None:
    st = path.stat()
    h.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def scan_folder(root: Path) -> Listing:
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: [p for p in sorted((root / c).iterdir()) if p.is_file() and p.suffix.lower() in EXTENSIONS]
             for c in folders}
    empty = [c for c in folders if not files[c]]
    if empty and len(empty) < len(folders):
        warnings.warn(f"{root}: ignored {len(empty)} class folder(s) without images: {', '.join(empty[:5])}"
                      f"{' …' if len(empty) > 5 else ''}", stacklevel=2)
    classes = [c for c in folders if files[c]]
    if not classes:
        raise UserError(f"{root}: no images found (expected {root}/<class>/*.png|jpg|jpeg|bmp|webp)")
    h = hashlib.sha256(b"folder\n")
    samples = []
    for c in classes:
        for p in files[c]:
            key = f"{c}/{p.name}"
            _stat_digest(h, p, key)
            samples.append(Sample(key, c, str(p)))
    _check_classes(classes, root)
    return Listing("folder", str(root.resolve()), samples, classes, h.hexdigest())


def _check_classes(classes: list[str], where: Path | str) -> None:
    if len(classes) < 2:
        raise UserError(f"{where}: only {len(classes)} class with images; a classifier needs at least 2")


MAX_LABEL = 200  # characters of a class name
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only (str.isdigit also accepts "²")


def class_label(raw: object, where: str) -> str:
    """The one rule for the labels of manifests and shards: a non-empty class name of at most MAX_LABEL
    characters, or an integer (kept as its digits)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    text = raw.strip() if isinstance(raw, str) else None
    if not text or len(text) > MAX_LABEL or not text.isprintable():
        raise UserError(f"{where}: label {shown(raw, 40)} is not a class name (a non-empty line of printable text of at most "
                        f"{MAX_LABEL} characters, or an integer)")
    return text


def class_order(labels: set[str]) -> list[str]:
    """Integers by value ("2" before "10"; a shard's .cls holds the class index), names as text."""
    return sorted(labels, key=int) if all(INTEGER.fullmatch(x) for x in labels) else sorted(labels)


def _manifest_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, path, label) of a CSV (header path,label) or JSONL manifest."""
    try:
        yield from _manifest_lines(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason}); save the manifest "
                        f"as UTF-8") from None


def _manifest_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    rel, label = row["path"], row["label"]
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{path}:{n}: expected a JSON object with \"path\" and \"label\"") from None
                if not isinstance(rel, str) or not rel:
                    raise UserError(f"{path}:{n}: \"path\" must be a non-empty string")
                yield n, rel, class_label(label, f"{path}:{n}")
            return
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise UserError(f"{path}: the first line must be a header naming the columns path,label "
                            f"(got {','.join(reader.fieldnames or [])})")
        for row in reader:
            if not row.get("path") or row.get("label") in (None, ""):
                raise UserError(f"{path}:{reader.line_num}: empty path or label")
            yield reader.line_num, row["path"], class_label(row["label"], f"{path}:{reader.line_num}")


def scan_manifest(path: Path) -> Listing:
    if not path.is_file():
        raise UserError(f"{path}: manifest does not exist")
    base = path.parent
    h = hashlib.sha256(b"manifest\n")
    samples = []
    for n, rel, label in _manifest_rows(path):
        p = (base / rel)
        if not p.is_file():
            raise UserError(f"{path}:{n}: {rel} does not exist (paths are relative to the manifest's folder)")
        _stat_digest(h, p, f"{rel}\0{label}")
        samples.append(Sample(rel, label, str(p)))
    if not samples:
        raise UserError(f"{path}: the manifest lists no images")
    classes = class_order({s.label for s in samples})
    _check_classes(classes, path)
    return Listing("manifest", str(path.resolve()), samples, classes, h.hexdigest())


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: `a-{000..009}.tar` → a-000.tar … a-009.tar (zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    if int(hi) < int(lo):
        raise UserError(f"{pattern}: empty shard range {{{lo}..{hi}}}")
    width = len(lo) if lo.startswith("0") else 0
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [x for i in range(int(lo), int(hi) + 1) for x in expand_braces(f"{head}{i:0{width}d}{tail}")]


def shard_files(spec: str, cache_root: Path | None, progress: bool) -> tuple[list[Path], str]:
    """The local shard files of a spec (URLs downloaded into cache_root/shards/ once) and its identity."""
    if not spec.startswith(("http://", "https://")) and Path(spec).is_dir():
        files = sorted(Path(spec).glob("*.tar"))
        if not files:
            raise UserError(f"{spec}: no .tar shards in this folder")
        return files, str(Path(spec).resolve())
    names = expand_braces(spec)
    if not spec.startswith(("http://", "https://")):
        missing = [n for n in names if not Path(n).is_file()]
        if missing:
            raise UserError(f"{missing[0]}: shard does not exist ({len(missing)} of {len(names)} missing)")
        return [Path(n) for n in names], str(Path(names[0]).resolve().parent / Path(spec).name)
    from ..download import fetch
    if cache_root is None:
        raise ValueError("shards given as URLs need a cache folder to download into")
    where = cache_root / "shards"
    files = []
    for url in names:
        target = where / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".tar")
        files.append(fetch(url, target, progress=progress,
                           offline_hint="shards given as URLs need the network the first time"))
    return files, spec


IMAGE_EXTS = tuple(e.lstrip(".") for e in EXTENSIONS)


def scan_shards(spec: str, cache_root: Path | None = None, progress: bool = True) -> Listing:
    files, identity = shard_files(spec, cache_root, progress)
    h = hashlib.sha256(b"shards\n")
    samples = []
    for f in files:
        _stat_digest(h, f, f.name)
        try:
            with tarfile.open(f, "r:") as tar:  # WebDataset shards are plain (uncompressed) tar files
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    d, base = os.path.split(m.name)
                    key, _, ext = base.partition(".")  # WebDataset: the key ends at the first dot
                    members.setdefault(os.path.join(d, key), {})[ext.lower()] = m
                for key, parts in members.items():
                    img = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
                    lab = parts.get("txt") or parts.get("cls")
                    if img is None or lab is None:
                        continue
                    where = f"{f}: {lab.name}"
                    if lab.size > 4 * MAX_LABEL:  # read no further than a class name can be long
                        raise UserError(f"{where}: a label of {lab.size:,} bytes is not a class name (at most "
                                        f"{MAX_LABEL} characters)")
                    label = class_label(tar.extractfile(lab).read().decode("utf-8"), where)
                    samples.append(Sample(f"{f.name}/{key}", label, str(f), img.name))
        except (tarfile.TarError, OSError, UnicodeDecodeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{f}: not a readable tar shard ({why})") from None
    if not samples:
        raise UserError(f"{spec}: no samples (each needs KEY.jpg|png|jpeg|bmp|webp and KEY.cls or KEY.txt)")
    classes = class_order({s.label for s in samples})
    _check_classes(classes, spec)
    return Listing("shards", identity, samples, classes, h.hexdigest())


# The largest image member a shard may hold: an uncompressed 40-megapixel RGBA image and its header (a larger member
# cannot be an image the decoder would accept).
MAX_MEMBER_BYTES = 40_000_000 * 4 + 1_000_000


def read_bytes(sample: Sample, tars: dict[str, tarfile.TarFile] | None = None) -> BinaryIO | str:
    """What the decoder opens: the file path, or the tar member as a file (read lazily: the decoder reads the
    header first and stops there on what is not an image; tars: open shards, reused)."""
    if sample.member is None:
        return sample.file
    tars = {} if tars is None else tars
    tar = tars.get(sample.file)
    if tar is None:
        tar = tars[sample.file] = tarfile.open(sample.file, "r:")
    member = tar.getmember(sample.member)
    if member.size > MAX_MEMBER_BYTES:
        raise OSError(f"{sample.member}: {member.size:,} bytes, over the {MAX_MEMBER_BYTES:,} an image may have")
    f = tar.extractfile(member)
    if f is None:
        raise OSError(f"{sample.member} is not a file in {sample.file}")
    return f
