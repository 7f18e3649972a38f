"""A model repository on disk, as Triton lays one out: `ROOT/<name>/<version>/` holds one checkpoint (a
.safetensors file, or an .onnx file: float or int8), `ROOT/<name>/config.yaml` optionally holds that model's
serving limits. This module only reads folders (no FastAPI, no model): what is there, with a stamp per version
that changes when its file does, so a poll knows what is new. `SingleCheckpoint` is `serve CKPT`: a repository
of one model with one version.

Versions are positive integers (folder names of digits); names are letters, digits, `_`, `-` and `.`, not
starting with a dot: anything else in the folder (a `.3.tmp` being copied in, `README`) is not a version or a
model and is skipped, so publishing a version is "copy into a hidden folder, then rename it to its number"."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

from ..errors import UserError
from ..schema import Mismatch, conform, keys_of, setting, shown

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VERSION = re.compile(r"[1-9][0-9]{0,8}")
CONFIG = "config.yaml"


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot name a model (None: it can). Names come from URLs too: this is the traversal guard."""
    if NAME.fullmatch(name) and ".." not in name:
        return None
    return (f"{name[:80]!r} is not a model name (letters, digits, '_', '-' and '.', at most 64, not starting with "
            f"'.' and without '..')")


def parse_version(text: str) -> int | None:
    """A version number from a folder name or URL segment, or None."""
    return int(text) if VERSION.fullmatch(text) else None


@dataclass(frozen=True)
class VersionFiles:
    """One version on disk: its checkpoint, and a stamp that changes when the file does (a poll reloads it)."""
    path: Path | None      # None: the folder holds no single checkpoint (see problem)
    stamp: tuple
    problem: str | None = None  # why this folder cannot be a version (two checkpoints, none yet)


@dataclass
class ModelConfig:
    """A model's serving settings, from ROOT/<name>/config.yaml (every key optional)."""
    max_batch: int | None = setting(None, range=(1, 4096), help="images per forward pass (default: serve's "
                                    "--max-batch)")
    max_wait_ms: float | None = setting(None, range=(0, 10_000), help="how long a batch waits to fill (default: "
                                        "serve's --max-wait-ms)")
    max_in_flight: int | None = setting(None, range=(1, 1_000_000), help="requests this model handles at once; "
                                        "more are answered 503 (default: serve's --max-in-flight)")
    default_version: int | None = setting(None, range=(1, 999_999_999), help="the version /v1/models/NAME/predict "
                                          "answers with (default: the highest loaded)")


def read_config(path: Path) -> ModelConfig:
    """ROOT/<name>/config.yaml, checked key by key; a missing file is every default. One line when wrong."""
    if not path.is_file():
        return ModelConfig()
    import yaml
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read it ({str(e).splitlines()[0]})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings ({', '.join(f.name for f in fields(ModelConfig))})")
    keys = {k.name: k for k in keys_of(ModelConfig)}
    values = {}
    for name, value in data.items():
        key = keys.get(name)
        if key is None:
            raise UserError(f"{path}: unknown key {str(name)[:60]!r}; known: {', '.join(keys)}")
        try:
            value = conform(value, key.type)
        except Mismatch as e:
            raise UserError(f"{path}: {name} = {shown(value)}: {e}") from None
        problem = key.problem(value)
        if problem:
            raise UserError(f"{path}: {name} = {shown(value)}: {problem}")
        values[name] = value
    return ModelConfig(**values)


def version_files(folder: Path, backend: str) -> VersionFiles:
    """The checkpoint a version folder holds: its .safetensors file with backend torch (an .onnx one if that is
    all there is), its .onnx file with backend onnx. Two candidates of the kind chosen are a problem, not a guess."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        return VersionFiles(None, ("unreadable",), f"cannot list it ({e.strerror})")
    by_kind = {"torch": [p for p in entries if p.suffix == ".safetensors"],
               "onnx": [p for p in entries if p.suffix == ".onnx"]}
    chosen = by_kind["onnx"] if backend == "onnx" else (by_kind["torch"] or by_kind["onnx"])
    if len(chosen) != 1:
        names = ", ".join(p.name for p in chosen)
        problem = (f"holds {len(chosen)} checkpoints ({names}); keep one per version folder" if chosen else
                   f"holds no {'.onnx' if backend == 'onnx' else '.safetensors or .onnx'} checkpoint")
        return VersionFiles(None, ("problem", names), problem)
    return VersionFiles(chosen[0], file_stamp(chosen[0]))


def file_stamp(path: Path) -> tuple:
    """What changes when a file is replaced or rewritten (a poll reloads the version then)."""
    st = path.stat()
    return path.name, st.st_mtime_ns, st.st_size, st.st_ino


class Repository(Protocol):
    """What the model hub reads models from."""

    def scan(self) -> dict[str, dict[int, VersionFiles]]:
        """Every model's versions on disk now."""
        ...

    def config(self, name: str) -> ModelConfig:
        ...

    def describe(self) -> str:
        ...


class FolderRepository:
    """ROOT/<name>/<version>/<checkpoint>."""

    def __init__(self, root: str | Path, backend: str = "torch") -> None:
        self.root, self.backend = Path(root), backend
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such model repository folder (expected {self.root}/<name>/<version>/"
                            f"<checkpoint>)")

    def describe(self) -> str:
        return str(self.root)

    def scan(self) -> dict[str, dict[int, VersionFiles]]:
        out: dict[str, dict[int, VersionFiles]] = {}
        try:
            models = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError as e:
            raise UserError(f"{self.root}: cannot list the model repository ({e.strerror})") from None
        for model in models:
            if model_name_problem(model.name):
                continue  # hidden folders, names a URL could not carry
            versions = {}
            for folder in model.iterdir():
                v = parse_version(folder.name)
                if v is not None and folder.is_dir():
                    versions[v] = version_files(folder, self.backend)
            out[model.name] = dict(sorted(versions.items()))
        return out

    def config(self, name: str) -> ModelConfig:
        return read_config(self.root / name / CONFIG)


class SingleCheckpoint:
    """`serve CKPT`: one model, version 1, read from that one file."""

    def __init__(self, path: str | Path, name: str) -> None:
        self.path, self.name = Path(path), name

    def describe(self) -> str:
        return str(self.path)

    def scan(self) -> dict[str, dict[int, VersionFiles]]:
        try:
            files = VersionFiles(self.path, file_stamp(self.path))
        except OSError as e:
            files = VersionFiles(None, ("missing",), f"cannot read {self.path} ({e.strerror})")
        return {self.name: {1: files}}

    def config(self, name: str) -> ModelConfig:
        return ModelConfig()


def name_for_checkpoint(path: str | Path) -> str:
    """The model name `serve CKPT` serves under: the run folder's name (runs/cifar10_quick/best.safetensors →
    cifar10_quick), else the file's stem, made URL-safe."""
    p = Path(path)
    base = p.name if p.is_dir() else (p.parent.name if p.stem in ("best", "last", "model") and p.parent.name
                                      else p.stem)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip(".-")[:64].replace("..", ".")
    return name if name and not model_name_problem(name) else "model"
