"""CIFAR-10 / CIFAR-100 in both official distributions (binary and python), with integrity checks
and an offline-safe download.

Why not torchvision.datasets: we want the binary version (what ../shared/data bundles), archives read
without extracting, never unpickling an unknown file, and one uint8 tensor per split instead of PIL
images, so the whole set lives in memory once (≈184 MB for CIFAR-10).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..download import fetch
from ..errors import UserError

IMAGE_BYTES = 3072  # 3 channel planes of 32x32

# Published SHA-256 digests of the official CIFAR-10 binary files (equal to ../shared/data's SHA256SUMS).
CIFAR10_BIN_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}
# MD5 digests of the official python-version files, as published in torchvision's CIFAR datasets.
# Only files matching these are ever unpickled.
PYTHON_MD5 = {
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}
ARCHIVES = {  # name: (url, md5 of the archive, folder inside it)
    "cifar10-bin": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                    "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin"),
    "cifar10-py": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                   "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100-bin": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                     "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary"),
    "cifar100-py": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
_LAYOUT = {  # dataset: {format: (folder, train files, test files, label bytes per record)}
    "cifar10": {
        "bin": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1),
        "py": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 1),
    },
    "cifar100": {
        "bin": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2),
        "py": ("cifar-100-python", ["train"], ["test"], 2),
    },
}


@dataclass
class ImageSet:
    """A split: uint8 pixels (N, 3, H, W) plus int64 labels.

    `images` is the storage the split lives in (an in-memory tensor, or the memory map of a decoded cache)
    and `rows`, when set, the split's rows in it: a subset is a view of the same storage, never a copy.
    Read pixels with `take`; `len()` counts the split's images."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""
    extra: dict = field(default_factory=dict)  # e.g. coarse labels for CIFAR-100
    rows: torch.Tensor | None = None
    cache: Path | None = None        # the decoded cache folder `images` maps (None: in memory)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def take(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Pixels of the split's images at positions idx (a copy of just those rows)."""
        if self.rows is None:
            return self.images[idx]
        rows = self.rows[idx]
        return self.images[rows] if rows.numel() else self.images[:0]

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        """The images at positions idx, as a view of the same storage."""
        rows = self.rows[idx] if self.rows is not None else idx
        return ImageSet(self.images, self.labels[idx], self.classes, self.source, rows=rows, cache=self.cache)

    def materialize(self) -> "ImageSet":
        """The split as its own contiguous tensor (rows gathered), e.g. to move it to an accelerator."""
        if self.rows is None:
            return self
        return ImageSet(self.take(slice(None)), self.labels, self.classes, self.source, self.extra, cache=self.cache)


def resolve_data_root(data_dir: str | os.PathLike | None) -> Path:
    """--data-dir beats $RESNETLAB_DATA beats ./data."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("RESNETLAB_DATA")
    return Path(env).expanduser() if env else Path("data")


class DataMissing(UserError):
    """The data root holds no copy of the data set (a download can fix this)."""


def holds_dataset(root: str | os.PathLike | None, dataset: str) -> bool:
    """Whether `root` already holds a copy of `dataset` (any of the formats read here); nothing is fetched."""
    if not root:
        return False
    try:
        _find_source(Path(root), dataset)
    except (DataMissing, OSError):
        return False
    return True


def mirror_url(default: str) -> str:
    """The official URL, or the same file name under $RESNETLAB_CIFAR_MIRROR (a local or company mirror)."""
    base = os.environ.get("RESNETLAB_CIFAR_MIRROR")
    return base.rstrip("/") + "/" + default.rsplit("/", 1)[1] if base else default


def _find_source(root: Path, dataset: str) -> tuple[str, Path]:
    """Locate (format, path) for a dataset under root: extracted folder (bin or py) or archive."""
    if not root.exists():
        raise DataMissing(f"{root}: data directory does not exist; pass --data-dir, set RESNETLAB_DATA, "
                          f"or run `resnetlab download {dataset} --data-dir DIR`")
    for fmt, (folder, *_rest) in _LAYOUT[dataset].items():
        if root.name == folder and root.is_dir():
            return fmt, root
        if (root / folder).is_dir():
            return fmt, root / folder
    for key, (url, _md5, _folder) in ARCHIVES.items():
        if key.startswith(dataset + "-"):
            archive = root / url.rsplit("/", 1)[1]
            if archive.is_file():
                return key.split("-")[1] + "-archive", archive
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        return ("py" if "python" in root.name else "bin") + "-archive", root
    folders = " or ".join(v[0] for v in _LAYOUT[dataset].values())
    raise DataMissing(f"{root}: no {dataset} data found (expected {folders}, or the official .tar.gz "
                    f"archive); run `resnetlab download {dataset} --data-dir {root}` with internet, "
                    f"or copy the files there")


def _parse_binary(raw: bytes, label_bytes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    rec = IMAGE_BYTES + label_bytes
    if len(raw) == 0 or len(raw) % rec:
        raise UserError(f"{name}: size {len(raw)} bytes is not a multiple of the {rec}-byte record "
                        f"({label_bytes} label byte(s) + 3072 pixels); the file is truncated or not CIFAR")
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    return arr[:, label_bytes:], arr[:, :label_bytes]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Defence in depth behind the MD5 check: the official batches only need numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle_official(raw: bytes, key: str, name: str) -> dict:
    """Unpickle only bytes whose MD5 is the official digest for `key` (never arbitrary pickles)."""
    expected = PYTHON_MD5.get(key)
    actual = hashlib.md5(raw).hexdigest()
    if expected is None or actual != expected:
        # --no-verify never extends to pickles: an unknown pickle can run code.
        raise UserError(f"{name}: MD5 {actual} is not the official digest of {key}; refusing to unpickle "
                        f"an unknown file (use the official cifar python archive, or the binary version)")
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure means a bad file
        raise UserError(f"{name}: cannot read python batch ({e})") from None


class _Reader:
    """Reads named member files from an extracted folder or a .tar.gz archive, verifying digests."""

    def __init__(self, fmt: str, path: Path, dataset: str, verify: bool) -> None:
        self.fmt, self.path, self.verify, self.dataset = fmt, path, verify, dataset
        self.folder = _LAYOUT[dataset]["py" if fmt.startswith("py") else "bin"][0]
        self._tar: tarfile.TarFile | None = None
        if fmt.endswith("archive"):
            try:
                self._tar = tarfile.open(path, "r:gz")
                self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            except (tarfile.TarError, EOFError, OSError) as e:
                raise UserError(f"{path}: truncated or corrupt archive ({e}); delete it and download "
                                f"again") from None

    def read(self, name: str) -> bytes:
        if self._tar is None:
            p = self.path / name
            if not p.is_file():
                raise UserError(f"{p}: missing file; the {self.folder} folder is incomplete")
            data = p.read_bytes()
        else:
            member = self._members.get(f"{self.folder}/{name}")
            if member is None:
                raise UserError(f"{self.path}: archive has no {self.folder}/{name}")
            try:
                data = self._tar.extractfile(member).read()  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001 - tar, EOF, OS and zlib errors all mean a broken archive
                raise UserError(f"{self.path}: truncated or corrupt archive while reading {name} "
                                f"({e})") from None
        if self.verify and self.dataset == "cifar10" and name in CIFAR10_BIN_SHA256:
            digest = hashlib.sha256(data).hexdigest()
            if digest != CIFAR10_BIN_SHA256[name]:
                raise UserError(f"{self.path / name if self._tar is None else self.path}: SHA-256 of "
                                f"{name} does not match the official digest (corrupt or modified file); "
                                f"re-download it, or pass --no-verify to use it anyway")
        return data

    def label(self) -> str:
        return str(self.path)


def _open(root: str | os.PathLike | None, dataset: str, verify: bool) -> _Reader:
    if dataset not in _LAYOUT:
        raise UserError(f"unknown dataset {dataset!r}; use cifar10 or cifar100")
    fmt, path = _find_source(resolve_data_root(root), dataset)
    return _Reader(fmt, path, dataset, verify)


def _read_split(reader: _Reader, split: str) -> ImageSet:
    fmt, path, dataset = reader.fmt, reader.path, reader.dataset
    folder, train_files, test_files, label_bytes = _LAYOUT[dataset]["py" if fmt.startswith("py") else "bin"]
    files = train_files if split == "train" else test_files
    pixels, labels, coarse = [], [], []
    for name in files:
        raw = reader.read(name)
        where = f"{reader.label()}/{name}" if reader._tar is None else f"{reader.label()}:{name}"
        if fmt.startswith("py"):
            d = _unpickle_official(raw, f"{folder}/{name}", where)
            x = np.asarray(d["data"], dtype=np.uint8)
            y = np.asarray(d["labels"] if "labels" in d else d["fine_labels"], dtype=np.int64)
            if "coarse_labels" in d:
                coarse.append(np.asarray(d["coarse_labels"], dtype=np.int64))
        else:
            x, lab = _parse_binary(raw, label_bytes, where)
            y = lab[:, -1].astype(np.int64)
            if label_bytes == 2:
                coarse.append(lab[:, 0].astype(np.int64))
        pixels.append(x)
        labels.append(y)
    images = torch.from_numpy(np.concatenate(pixels).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(labels))
    classes = _class_names(reader, fmt, dataset, folder)
    if int(y.max()) >= len(classes) or int(y.min()) < 0:
        raise UserError(f"{path}: label {int(y.max())} out of range for {len(classes)} classes; corrupt data")
    extra = {"coarse_labels": torch.from_numpy(np.concatenate(coarse))} if coarse else {}
    return ImageSet(images, y, classes, source=f"{dataset}:{path}", extra=extra)


def load_cifar(root: str | os.PathLike | None = None, dataset: str = "cifar10", split: str = "train",
               verify: bool = True) -> ImageSet:
    """Load one split ('train' or 'test') of CIFAR-10/100 as an ImageSet of uint8 (N, 3, 32, 32)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use train or test")
    return _read_split(_open(root, dataset, verify), split)


def load_cifar_splits(root: str | os.PathLike | None = None, dataset: str = "cifar10",
                      verify: bool = True, download_missing: bool = False,
                      log=print) -> tuple[ImageSet, ImageSet]:
    """(train, test) through one reader, so an archive is opened and indexed once.

    download_missing: when the data root has no copy, fetch the official binary archive into it first
    (progress bar, checksum, atomic), as torchvision's `download=True` does; offline, one clear line."""
    try:
        reader = _open(root, dataset, verify)
    except DataMissing:
        target = resolve_data_root(root)
        if not download_missing or (target.exists() and not target.is_dir()):
            raise
        log(f"{dataset} not found in {target}; downloading the official binary archive (about 160 MB)")
        download(f"{dataset}-bin", target, verify=verify)
        reader = _open(root, dataset, verify)
    return _read_split(reader, "train"), _read_split(reader, "test")


def _class_names(reader: _Reader, fmt: str, dataset: str, folder: str) -> list[str]:
    try:
        if fmt.startswith("py"):
            meta_name = "batches.meta" if dataset == "cifar10" else "meta"
            batches = _unpickle_official(reader.read(meta_name), f"{folder}/{meta_name}", meta_name)
            names = batches["label_names"] if dataset == "cifar10" else batches["fine_label_names"]
        else:
            meta_name = "batches.meta.txt" if dataset == "cifar10" else "fine_label_names.txt"
            names = [s for s in reader.read(meta_name).decode().split("\n") if s.strip()]
    except UserError:
        if dataset == "cifar10":
            return list(CIFAR10_CLASSES)
        return [str(i) for i in range(100)]
    return [str(n).strip() for n in names]


def cifar10(root: str | os.PathLike | None = None, verify: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of CIFAR-10 from root (see resolve_data_root)."""
    return load_cifar_splits(root, "cifar10", verify)


def cifar100(root: str | os.PathLike | None = None, verify: bool = True) -> tuple[ImageSet, ImageSet]:
    return load_cifar_splits(root, "cifar100", verify)


def download(name: str, root: str | os.PathLike, url: str | None = None, md5: str | None = None,
             timeout: float = 30.0, verify: bool = True) -> Path:
    """Fetch an official archive into root and extract it atomically; returns the extracted folder.

    A partial download is kept as `<archive>.part` and continued with an HTTP Range request; the
    extracted folder appears only after the checksum passed and extraction finished (temp dir + rename).
    """
    if name not in ARCHIVES:
        raise UserError(f"unknown archive {name!r}; choose one of {', '.join(ARCHIVES)}")
    default_url, default_md5, folder = ARCHIVES[name]
    url, md5 = url or mirror_url(default_url), md5 or default_md5
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file, not a data folder; pass a folder with --data-dir")
    root.mkdir(parents=True, exist_ok=True)
    target = root / folder
    if target.is_dir():
        return target
    archive = root / default_url.rsplit("/", 1)[1]
    hint = f"put {archive.name} (or its extracted folder) in {archive.parent} and run again"
    fetch(url, archive, digest=md5 if verify else None, algo="md5", timeout=timeout, offline_hint=hint)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive}: archive does not contain {folder}/")
        os.replace(tmp / folder, target)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot extract ({e}); delete it and download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
