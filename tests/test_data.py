import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from PIL import Image

from resnetlab import UserError
from resnetlab.cli import main
from resnetlab.data import (AugmentConfig, BatchLoader, channel_stats, cifar10, download,
                            load_cifar, load_image_folder, resolve_data_root)
from resnetlab.data import cifar as cifar_mod
from resnetlab.data.augment import crop_flip, jpeg_compress, photo_artifacts, resample
from resnetlab.data.cifar import _parse_binary

from conftest import synthetic_images


# ---------------------------------------------------------------- CIFAR binary
def test_reads_binary_records_in_official_layout(tiny_cifar):
    train, test = cifar10(tiny_cifar, verify=False)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (40, 3, 32, 32)
    raw = np.frombuffer((tiny_cifar / "cifar-10-batches-bin" / "data_batch_2.bin").read_bytes(), np.uint8)
    rec = raw[:3073]
    assert train.labels[40].item() == rec[0]
    # 1024 red bytes, then green, then blue, each row-major 32x32
    assert torch.equal(train.images[40, 1], torch.from_numpy(rec[1 + 1024:1 + 2048].reshape(32, 32).copy()))
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_written_binary_reads_back_in_order(tmp_path):
    from resnetlab.testing import write_cifar10_binary
    x, y = synthetic_images(53, seed=3)  # 53: the five training files get 11/11/11/10/10 records
    tx, ty = synthetic_images(7, seed=4)
    write_cifar10_binary(tmp_path, (x, y), (tx, ty), [f"c{i}" for i in range(10)])
    train, test = cifar10(tmp_path, verify=False)
    assert torch.equal(train.images, torch.from_numpy(x)) and torch.equal(train.labels, torch.from_numpy(y).long())
    assert torch.equal(test.images, torch.from_numpy(tx)) and train.classes[3] == "c3"
    assert (tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin").stat().st_size == 10 * 3073
    with pytest.raises(ValueError, match="labels must be 0-9"):
        write_cifar10_binary(tmp_path / "bad", (x, y + 5), (tx, ty))


def test_accepts_the_batches_folder_itself(tiny_cifar):
    a = load_cifar(tiny_cifar / "cifar-10-batches-bin", split="test", verify=False)
    assert len(a) == 40


def test_checksum_mismatch_names_file(tiny_cifar):
    with pytest.raises(UserError, match="data_batch_1.bin.*does not match the official digest.*--no-verify"):
        cifar10(tiny_cifar, verify=True)


def test_wrong_record_size(tiny_cifar):
    p = tiny_cifar / "cifar-10-batches-bin" / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"data_batch_3.bin: size .* 3073-byte record"):
        cifar10(tiny_cifar, verify=False)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cifar10(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no cifar10 data found"):
        cifar10(tmp_path / "empty")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("RESNETLAB_DATA")
    assert resolve_data_root(None) == Path("data")


def _make_archive(src_folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_folder, arcname=src_folder.name)
    return archive


def test_archive_equals_folder(tiny_cifar, tmp_path):
    arch_root = tmp_path / "arch"
    arch_root.mkdir()
    _make_archive(tiny_cifar / "cifar-10-batches-bin", arch_root / "cifar-10-binary.tar.gz")
    a_train, a_test = cifar10(arch_root, verify=False)
    f_train, f_test = cifar10(tiny_cifar, verify=False)
    assert torch.equal(a_train.images, f_train.images) and torch.equal(a_test.labels, f_test.labels)


def test_truncated_archive(tiny_cifar, tmp_path):
    arch = _make_archive(tiny_cifar / "cifar-10-batches-bin", tmp_path / "cifar-10-binary.tar.gz")
    arch.write_bytes(arch.read_bytes()[: arch.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        cifar10(tmp_path, verify=False)


def test_cifar100_binary_has_coarse_and_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    x, fine = synthetic_images(30, num_classes=100)
    coarse = fine // 5
    for name in ("train.bin", "test.bin"):
        recs = np.concatenate([coarse[:, None], fine[:, None], x.reshape(30, -1)], axis=1).astype(np.uint8)
        (folder / name).write_bytes(recs.tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(f"c{i}" for i in range(100)))
    ds = load_cifar(tmp_path, "cifar100", "train")
    assert torch.equal(ds.labels, torch.from_numpy(fine.astype(np.int64)))
    assert torch.equal(ds.extra["coarse_labels"], torch.from_numpy(coarse.astype(np.int64)))
    assert len(ds.classes) == 100
    (folder / "train.bin").write_bytes(recs.tobytes()[:-3074] + b"\0" * 3073)
    with pytest.raises(UserError, match="3074-byte record"):
        load_cifar(tmp_path, "cifar100", "train")


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**32 - 1)), min_size=1, max_size=5))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_binary_parser_roundtrip(specs):
    records = [(label, np.random.default_rng(seed).integers(0, 256, 3072, dtype=np.uint8).tobytes())
               for label, seed in specs]
    raw = b"".join(bytes([label]) + pixels for label, pixels in records)
    pixels, labels = _parse_binary(raw, 1, "x.bin")
    assert labels[:, 0].tolist() == [r[0] for r in records]
    assert all(pixels[i].tobytes() == r[1] for i, r in enumerate(records))


@given(st.binary(max_size=10000))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_binary_parser_rejects_wrong_sizes(raw):
    if raw and len(raw) % 3073 == 0:
        return
    with pytest.raises(UserError):
        _parse_binary(raw, 1, "x.bin")


# ---------------------------------------------------------------- CIFAR python (pickle)
def _python_folder(root: Path, payload_fn=None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x, y = synthetic_images(10, seed=k)
        obj = payload_fn() if payload_fn else {"data": x.reshape(10, -1), "labels": y.tolist()}
        (folder / name).write_bytes(pickle.dumps(obj))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"n{i}" for i in range(10)]}))
    return folder


def test_python_version_refuses_unknown_pickles(tmp_path):
    _python_folder(tmp_path)
    with pytest.raises(UserError, match="not the official digest.*refusing to unpickle"):
        load_cifar(tmp_path, split="train")


def test_python_version_loads_when_digest_is_official(tmp_path, monkeypatch):
    folder = _python_folder(tmp_path)
    digests = {f"cifar-10-batches-py/{p.name}": hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(cifar_mod, "PYTHON_MD5", digests)
    ds = load_cifar(tmp_path, split="train")
    assert ds.images.shape == (50, 3, 32, 32) and ds.classes[3] == "n3"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_even_official_digest_cannot_run_code(tmp_path, monkeypatch):
    folder = _python_folder(tmp_path, payload_fn=lambda: {"data": _Evil()})
    digests = {f"cifar-10-batches-py/{p.name}": hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(cifar_mod, "PYTHON_MD5", digests)
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load os.system"):
        load_cifar(tmp_path, split="train")


# ---------------------------------------------------------------- download
def test_download_from_file_url(tiny_cifar, tmp_path):
    arch = _make_archive(tiny_cifar / "cifar-10-batches-bin", tmp_path / "mirror.tar.gz")
    md5 = hashlib.md5(arch.read_bytes()).hexdigest()
    root = tmp_path / "dl"
    folder = download("cifar10-bin", root, url=arch.as_uri(), md5=md5)
    assert folder == root / "cifar-10-batches-bin" and len(cifar10(root, verify=False)[0]) == 200
    assert not list(root.glob(".extract-*")) and not list(root.glob("*.part"))


def test_download_bad_checksum_and_offline(tiny_cifar, tmp_path):
    arch = _make_archive(tiny_cifar / "cifar-10-batches-bin", tmp_path / "mirror.tar.gz")
    with pytest.raises(UserError, match="expected 0+; removed it"):
        download("cifar10-bin", tmp_path / "dl", url=arch.as_uri(), md5="0" * 32)
    assert not (tmp_path / "dl" / "cifar-10-batches-bin").exists()
    with pytest.raises(UserError, match="cannot download .*offline\\? put cifar-10-binary.tar.gz"):
        download("cifar10-bin", tmp_path / "dl2", url="http://127.0.0.1:9/cifar-10-binary.tar.gz", timeout=2)


def test_download_cli_offline_one_line(tmp_path, capsys):
    assert main(["download", "cifar10", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/x.tgz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download") and "\n" not in err


# ---------------------------------------------------------------- real data
def test_bundled_cifar10_verified_and_statistics(real_data):
    train, test = cifar10(real_data, verify=True)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    mean, std = channel_stats(train.images)
    assert mean == (0.4914, 0.4822, 0.4465)
    assert std == (0.247, 0.2435, 0.2616)


# ---------------------------------------------------------------- image folders
def test_image_folder_split_is_stratified_and_seeded(image_folder):
    train, test = load_image_folder(image_folder, size=32, split=0.25, seed=3, progress=False)
    assert train.classes == ["class_0", "class_1", "class_2"]
    assert len(train) + len(test) == 60
    assert torch.bincount(test.labels).tolist() == [5, 5, 5]
    again = load_image_folder(image_folder, size=32, split=0.25, seed=3, progress=False)[1]
    assert torch.equal(again.take(slice(None)), test.take(slice(None)))


def test_image_folder_modes_converted_and_corrupt_skipped(tmp_path):
    root = tmp_path / "f"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    Image.new("L", (20, 20), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(root / "a" / "rgba.png")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(root / "a" / "deep.png")
    Image.new("P", (32, 32), 3).save(root / "b" / "pal.png")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(root / "b" / "rgb.jpg")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        train, test = load_image_folder(root, size=32, split=0.5, progress=False)
    allimgs = torch.cat([train.take(slice(None)), test.take(slice(None))])
    assert allimgs.shape == (5, 3, 32, 32)
    assert 255 in allimgs.flatten().tolist()  # 16-bit white stays white
    with pytest.raises(UserError, match="broken.png: cannot decode"):
        load_image_folder(root, size=32, progress=False, strict=True)


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        load_image_folder(tmp_path / "empty")
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "a" / "x.png")
    with pytest.raises(UserError, match="only 1 class"):
        load_image_folder(tmp_path / "empty")


def test_image_folder_train_test_subroots(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    train, test = load_image_folder(tmp_path, size=16, progress=False)
    assert len(train) == 6 and len(test) == 6 and train.image_size == 16


def test_shared_cifar100_subset_as_image_folder(real_data):
    train, test = load_image_folder(real_data / "cifar100-subset", size=32, split=0.2, seed=0, progress=False)
    assert len(train.classes) == 100 and len(train) == 8000 and len(test) == 2000
    assert torch.bincount(test.labels).tolist() == [20] * 100


# ---------------------------------------------------------------- augmentation and loader
def _reference_crop_flip(img, dy, dx, flip, p, mode):
    padded = F.pad(img[None].float(), (p, p, p, p), mode="constant" if mode == "zeros" else "reflect")[0]
    out = padded[:, p + dy:p + dy + 32, p + dx:p + dx + 32]
    return out.flip(2) if flip else out


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_flip_matches_pad_then_crop(mode):
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(crop_padding=4, pad_mode=mode, flip=True)
    g = torch.Generator().manual_seed(0)
    out = crop_flip(x, cfg, g)
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(-4, 5, (16,), generator=g)
    dx = torch.randint(-4, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert flip.any() and (~flip).any()
    for i in range(16):
        ref = _reference_crop_flip(x[i], dy[i].item(), dx[i].item(), flip[i].item(), 4, mode)
        assert torch.equal(out[i].float(), ref), i


def test_loader_deterministic_and_eval_in_order(tiny_cifar):
    train, test = cifar10(tiny_cifar, verify=False)
    mk = lambda: BatchLoader(train, 32, (0.5,) * 3, (0.25,) * 3, train=True, augment=AugmentConfig(cutout=8), seed=1)
    a, b = mk(), mk()
    xa = [x for x, _ in a]
    assert all(torch.equal(x, y) for x, (y, _) in zip(xa, b))
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], xa[0])
    assert len(xa) == 200 // 32  # drop_last in training
    ev = BatchLoader(test, 16, (0.5,) * 3, (0.25,) * 3)
    ys = torch.cat([y for _, y in ev])
    assert torch.equal(ys, test.labels) and len(ev) == 3
    x0 = next(iter(ev))[0]
    assert torch.allclose(x0, (test.images[:16].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_half_set_distributed_environment_is_refused(tiny_cifar, tmp_path, monkeypatch, capsys):
    # WORLD_SIZE > 1 without the rest of torchrun's environment: one line before any work, nothing written.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for var in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-verify", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "launch with torchrun" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_loader_shards_the_global_batch_and_the_eval_split(tiny_cifar):
    train, test = cifar10(tiny_cifar, verify=False)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    aug = AugmentConfig(jpeg=0.5)
    whole = BatchLoader(train, 40, train=True, augment=aug, seed=3, **kw)
    parts = [BatchLoader(train, 40, train=True, augment=aug, seed=3, shard=(r, 2), **kw) for r in range(2)]
    for loader in (whole, *parts):
        loader.set_epoch(1)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    ev = [BatchLoader(test, 7, shard=(r, 3), **kw) for r in range(3)]
    ys = torch.cat([y for loader in ev for _, y in loader])
    assert torch.equal(ys, test.labels)  # every test image once, in order, over the ranks


def test_loader_channels_last_output(tiny_cifar):
    train, _ = cifar10(tiny_cifar, verify=False)
    x, _ = next(iter(BatchLoader(train, 8, (0.5,) * 3, (0.25,) * 3, train=True, augment=AugmentConfig(),
                                 channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32


def _photo_like(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with edges (JPEG's home ground), uint8 (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False)
    x[:, :, 10:20, 5:25] = torch.rand(n, 3, 1, 1, generator=g) * 255
    return x.round().clamp(0, 255).to(torch.uint8)


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    import io
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_batched_jpeg_is_close_to_a_real_jpeg_codec(quality):
    x = _photo_like(32)
    pil = _pil_jpeg(x, quality).float()
    sim = jpeg_compress(x, torch.full((32,), quality)).float()
    lost = (x.float() - pil).abs().mean()      # what the codec does to the images
    miss = (sim - pil).abs().mean()            # how far our simulation is from the codec
    assert lost > 0.5 and miss < 0.35 * lost, (float(lost), float(miss))


def test_resample_operator_equals_interpolating_the_image():
    x = _photo_like(8)
    for factor in (1.5, 2.0, 4.0):
        big = F.interpolate(x.float(), scale_factor=factor, mode="bicubic", align_corners=False)
        want = F.interpolate(big, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        want = want.clamp(0, 255)  # bicubic overshoots at edges; pixels are clamped to 0-255 in both
        assert (resample(x, factor).float() - want).abs().max() <= 0.5 + 1e-3  # rounding only


def test_photo_artifacts_share_determinism_and_start_epoch(tiny_cifar):
    x = _photo_like(200)
    off = AugmentConfig(jpeg=0.0, resample=0.0)
    assert torch.equal(photo_artifacts(x, off, torch.Generator().manual_seed(0)), x)
    half = AugmentConfig(jpeg=0.5, jpeg_quality=(30, 30))
    a = photo_artifacts(x, half, torch.Generator().manual_seed(1))
    b = photo_artifacts(x, half, torch.Generator().manual_seed(1))
    changed = (a != x).flatten(1).any(1).float().mean()
    assert torch.equal(a, b) and 0.35 < changed < 0.65
    assert torch.equal(x, _photo_like(200))  # the input batch is not modified in place
    # nor when an earlier step (resampling) drew no image of this batch and a later one (JPEG) did
    photo_artifacts(x, AugmentConfig(resample=1e-9, jpeg=1.0), torch.Generator().manual_seed(1))
    assert torch.equal(x, _photo_like(200))
    train, _ = cifar10(tiny_cifar, verify=False)
    aug = AugmentConfig(crop_padding=0, flip=False, jpeg=1.0, artifacts_from_epoch=1)
    loader = BatchLoader(train, 50, (0.5,) * 3, (0.25,) * 3, train=True, augment=aug, seed=0)
    plain = BatchLoader(train, 50, (0.5,) * 3, (0.25,) * 3, train=True, augment=AugmentConfig(0, flip=False), seed=0)
    for epoch, same in ((0, True), (1, False)):
        loader.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert torch.equal(next(iter(loader))[0], next(iter(plain))[0]) == same


def test_sensor_noise_has_the_drawn_strength_on_its_share_only():
    x = torch.full((400, 3, 32, 32), 128, dtype=torch.uint8)  # mid-grey: no clipping
    cfg = AugmentConfig(noise=0.5, noise_std=(4, 4))
    a = photo_artifacts(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, photo_artifacts(x, cfg, torch.Generator().manual_seed(2))) and (x == 128).all()
    noisy = (a != x).flatten(1).any(1)
    assert 0.4 < noisy.float().mean() < 0.6
    assert (a[~noisy] == 128).all()
    std = (a[noisy].float() - 128).std().item()
    assert 3.8 < std < 4.2  # 4 grey levels (+ rounding's 0.29 in quadrature)
    graded = photo_artifacts(x, AugmentConfig(noise=1.0, noise_std=(0, 8)), torch.Generator().manual_seed(3))
    per_image = (graded.float() - 128).flatten(1).std(1)
    assert per_image.min() < 1 and per_image.max() > 7  # drawn per image across the range


def test_artifact_keys_are_validated(tmp_path, capsys):
    for bad in ("data.augment.jpeg_quality=[95,30]", "data.augment.resample_scale=[0.5,2]", "data.augment.jpeg=1.5",
                "data.augment.noise=2", "data.augment.noise_std=[8,2]"):
        assert main(["train", "--out", str(tmp_path / "x"), bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad.split("=")[0] in err
    assert not (tmp_path / "x").exists()
