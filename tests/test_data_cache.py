"""Users' images at any size: sources (folder, manifest, shards, URLs), the decoded memory-mapped cache
(reuse, invalidation, kill -9), the batch pipeline reading it (order, DDP slices, bounded memory), and the
linear probe on precomputed features."""
from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import BatchLoader, ImageSet
from resnetlab.data.cache import cache_dir, list_caches
from resnetlab.data.folders import cached_set, load_image_folder
from resnetlab.data.loader import quasi_random_order
from resnetlab.errors import UserError

from conftest import synthetic_images

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _folder(root: Path, n: int = 30, classes: int = 3, size: int = 24, seed: int = 1) -> Path:
    x, y = synthetic_images(n, num_classes=classes, seed=seed, size=size)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"c{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:03d}.png")
    return root


def _listing_files(root: Path) -> list[tuple[str, str]]:
    """(relative path, class) in the folder reader's order: classes sorted, files sorted."""
    return [(f"{c.name}/{p.name}", c.name) for c in sorted(root.iterdir()) if c.is_dir()
            for p in sorted(c.iterdir())]


def _all(ds: ImageSet) -> torch.Tensor:
    return ds.take(slice(None))


def test_cache_is_reused_then_rebuilt_when_a_file_changes(tmp_path):
    root = _folder(tmp_path / "f")
    logs: list[str] = []
    a, ca = cached_set(root, 16, progress=False, log=logs.append)
    assert any("decoded in" in line for line in logs) and len(a) == 30
    logs.clear()
    b, cb = cached_set(root, 16, progress=False, log=logs.append)
    assert not any("decoded" in line for line in logs) and cb.path == ca.path  # reused: nothing decoded
    assert torch.equal(_all(a), _all(b))
    # pixels come from the file: rewrite one image and the cache says why it rebuilds
    victim = root / "c0" / sorted(os.listdir(root / "c0"))[0]
    Image.new("RGB", (24, 24), (255, 255, 255)).save(victim)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    logs.clear()
    c, _ = cached_set(root, 16, progress=False, log=logs.append)
    assert any("files of the source changed" in line and "rebuilding" in line for line in logs)
    row = ca.keys().index(f"c0/{victim.name}")
    assert (_all(c)[row] == 255).all() and not (_all(a)[row] == 255).all()
    # a file added: said as a count
    Image.new("RGB", (24, 24)).save(root / "c1" / "new.png")
    logs.clear()
    d, _ = cached_set(root, 16, progress=False, log=logs.append)
    assert len(d) == 31 and any("now lists 31 images, 30 when the cache was built" in line for line in logs)
    # another size is another cache; both are listed
    cached_set(root, 8, progress=False, log=lambda *a: None)
    sizes = sorted(c.size for c in list_caches())
    assert 8 in sizes and 16 in sizes


def test_parallel_build_equals_single_worker_build(tmp_path):
    root = _folder(tmp_path / "f", n=40)
    one, c1 = cached_set(root, 20, workers=1, progress=False, log=lambda *a: None)
    (c1.path / "meta.json").unlink()  # force a rebuild of the same cache with 2 workers
    two, c2 = cached_set(root, 20, workers=2, progress=False, log=lambda *a: None)
    assert c2.meta.workers == 2 and torch.equal(_all(one), _all(two)) and torch.equal(one.labels, two.labels)


def test_unreadable_files_are_skipped_listed_and_refused_under_strict(tmp_path):
    root = _folder(tmp_path / "f", n=12)
    (root / "c1" / "zz-broken.png").write_bytes(b"\x89PNG not really")
    logs: list[str] = []
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds, cache = cached_set(root, 16, progress=False, log=logs.append)
    assert len(ds) == 12 and cache.meta.bad == ["c1/zz-broken.png"] and cache.meta.listed == 13
    assert "zz-broken.png" not in "".join(cache.keys())
    # the reused cache still says so, and --strict refuses it
    logs.clear()
    cached_set(root, 16, progress=False, log=logs.append)
    assert any("1 unreadable image(s) skipped" in line for line in logs)
    with pytest.raises(UserError, match="zz-broken.png: cannot decode"):
        cached_set(root, 16, strict=True, progress=False, log=lambda *a: None)


def test_kill_9_during_the_build_leaves_nothing_a_later_run_uses(tmp_path):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(600):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg", quality=95)
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.Popen([sys.executable, "-m", "resnetlab", "data", "cache", str(root), "--image-size", "96",
                          "--workers", "1", "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = cache_dir() / "decoded"
    deadline = time.time() + 60
    while time.time() < deadline and not any(base.glob(".photos-96px-*.build-*/images.u8")):
        time.sleep(0.005)
    time.sleep(0.2)  # into decoding (600 photos take a few seconds on one worker)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    left = list(base.glob(".photos-96px-*.build-*"))
    assert left, "the build folder of the killed process should still be there"
    assert not [c for c in list_caches() if c.name.startswith("photos-96px")]  # nothing usable, nothing listed
    logs: list[str] = []
    ds, cache = cached_set(root, 96, progress=False, log=logs.append)
    assert len(ds) == 600 and any("decoded in" in line for line in logs)
    assert not any(d.exists() for d in left)  # the dead build's leftovers are removed
    # SIGTERM (a scheduler's stop) mid-build: one line, exit 143, nothing left behind
    p = subprocess.Popen([sys.executable, "-m", "resnetlab", "data", "cache", str(root), "--image-size", "80",
                          "--workers", "2", "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    while time.time() < deadline + 60 and not any(base.glob(".photos-80px-*.build-*/images.u8")):
        time.sleep(0.005)
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM and err.strip() == "interrupted (SIGTERM)", err
    assert not list(base.glob(".photos-80px-*.build-*")) and not [c for c in list_caches() if c.name.startswith("photos-80px")]


def _write_shards(root: Path, files: list[tuple[str, str]], out: Path, per: int, label_ext: str) -> list[Path]:
    classes = sorted({c for _, c in files})
    shards = []
    for s in range(0, len(files), per):
        path = out / f"shard-{s // per:02d}.tar"
        with tarfile.open(path, "w") as tar:
            for rel, c in files[s:s + per]:
                key = rel.replace("/", "_").rsplit(".", 1)[0]
                tar.add(root / rel, arcname=f"{key}.png")
                data = (str(classes.index(c)) if label_ext == "cls" else c).encode()
                info = tarfile.TarInfo(f"{key}.{label_ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


@pytest.fixture
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_manifests_and_shards_give_the_folders_tensors(tmp_path, loopback):
    root = _folder(tmp_path / "f", n=24)
    files = _listing_files(root)
    folder, _ = cached_set(root, 16, progress=False, log=lambda *a: None)
    # CSV and JSONL manifests beside the images (paths relative to the manifest)
    with open(root / "all.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(files)
    (root / "all.jsonl").write_text("".join(json.dumps({"path": p, "label": c}) + "\n" for p, c in files))
    # shards: class names in .txt; integer labels in .cls; and the same shards over HTTP
    (tmp_path / "txt").mkdir()
    (tmp_path / "cls").mkdir()
    _write_shards(root, files, tmp_path / "txt", 10, "txt")
    _write_shards(root, files, tmp_path / "cls", 10, "cls")
    www, url = loopback
    _write_shards(root, files, www, 10, "txt")
    sources = {"csv": root / "all.csv", "jsonl": root / "all.jsonl", "shard folder": tmp_path / "txt",
               "brace pattern": str(tmp_path / "txt" / "shard-{00..02}.tar"), "cls": tmp_path / "cls",
               "url": f"{url}/shard-{{00..02}}.tar"}
    for what, src in sources.items():
        ds, cache = cached_set(src, 16, progress=False, log=lambda *a: None)
        assert torch.equal(_all(ds), _all(folder)), what
        assert torch.equal(ds.labels, folder.labels), what
        assert ds.classes == (["0", "1", "2"] if what == "cls" else folder.classes), what
    # the URL shards were downloaded once into the cache folder: a second scan reads them from there
    assert len(list((cache_dir() / "shards").glob("*.tar"))) == 3


def test_bad_sources_fail_with_one_line(tmp_path, loopback):
    root = _folder(tmp_path / "f", n=6)
    (root / "bad.csv").write_text("file,class\nc0/000.png,c0\n")
    (root / "gone.csv").write_text("path,label\nc0/nothere.png,c0\n")
    (root / "bad.jsonl").write_text('{"path": "c0/000.png"}\n')
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    _, url = loopback
    cases = {root / "bad.csv": "header naming the columns path,label", root / "gone.csv": "gone.csv:2: c0/nothere.png does not exist",
             root / "bad.jsonl": "bad.jsonl:1: expected a JSON object", tmp_path / "bad.tar": "not a readable tar shard",
             str(tmp_path / "s-{0..3}.tar"): "shard does not exist (4 of 4 missing)",
             f"{url}/missing-{{0..1}}.tar": "cannot download"}
    for src, msg in cases.items():
        with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
            cached_set(src, 16, progress=False, log=lambda *a: None)
        assert "\n" not in str(e.value)


def test_splits_are_views_of_the_cache_not_copies(tmp_path):
    root = _folder(tmp_path / "f", n=30)
    train, test = load_image_folder(root, size=16, split=0.2, seed=0, progress=False, log=lambda *a: None)
    assert train.images.data_ptr() == test.images.data_ptr() and len(train.images) == 30  # one storage
    assert len(train) == 24 and len(test) == 6 and not set(train.rows.tolist()) & set(test.rows.tolist())
    assert torch.equal(train.take(torch.tensor([2])), train.images[train.rows[2:3]])


def test_quasi_random_order_is_a_permutation_read_in_runs():
    g = torch.Generator().manual_seed(0)
    order = quasi_random_order(1000, 50, 4, g)
    assert sorted(order.tolist()) == list(range(1000))
    again = quasi_random_order(1000, 50, 4, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    # each window of 4 chunks holds exactly 4 whole chunks: 200 positions from 4 runs of 50
    for w in range(0, 1000, 200):
        chunks = {int(i) // 50 for i in order[w:w + 200]}
        assert len(chunks) == 4
    assert not torch.equal(order, torch.arange(1000))


def test_loader_quasi_random_order_yields_every_image_once():
    n = 300
    ds = ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous(),
                  torch.arange(n), ["a"]).subset(torch.arange(0, n, 1))
    loader = BatchLoader(ds, 10, (0.0,) * 3, (1.0,) * 3, train=True, drop_last=False, order="quasi-random")
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(n))


def test_ddp_ranks_read_only_their_slice_and_match_one_process(tmp_path):
    from resnetlab.data.augment import AugmentConfig
    root = _folder(tmp_path / "f", n=40)
    train, _ = load_image_folder(root, size=16, split=0.2, progress=False, log=lambda *a: None)
    aug = AugmentConfig(crop_padding=2, flip=True, cutout=4)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, train=True, augment=aug, seed=3)
    whole = [x for x, _ in BatchLoader(train, 8, **kw)]
    for r in range(2):
        loader = BatchLoader(train, 8, shard=(r, 2), **kw)
        read: list[int] = []
        pixels = loader._pixels
        loader._pixels = lambda idx: (read.extend(idx.tolist()), pixels(idx))[1]
        parts = [x for x, _ in loader]
        assert all(torch.equal(p, w[r * 4:(r + 1) * 4]) for p, w in zip(parts, whole))
        order = loader.epoch_order()
        mine = [int(i) for b in range(len(loader)) for i in order[b * 8 + r * 4:b * 8 + (r + 1) * 4]]
        assert read == mine  # this rank read its own rows and no other


def test_data_command_cache_ls_rm(tmp_path, capsys):
    root = _folder(tmp_path / "mine", n=12)
    assert main(["data", "cache", str(root), "--image-size", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "12 images, 3 classes" in out
    assert main(["data", "ls"]) == 0
    listed = capsys.readouterr().out
    assert "mine-16px-" in listed and str(root.resolve()) in listed
    assert main(["data", "rm", str(root)]) == 0
    assert "removed mine-16px-" in capsys.readouterr().out
    assert not [c for c in list_caches() if c.source == str(root.resolve())]
    assert main(["data", "rm", "no-such-cache"]) == 2
    assert "no such cache" in capsys.readouterr().err
    assert main(["data", "cache", str(tmp_path / "missing"), "--image-size", "16"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _peak_anon_mb(cmd: list[str], env: dict) -> tuple[int, float, str]:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                peak = max([peak] + [int(line.split()[1]) for line in f if line.startswith("RssAnon:")])
        except OSError:
            pass
        time.sleep(0.02)
    return p.returncode, peak / 1024, p.stdout.read()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_training_from_a_cache_bigger_than_its_anonymous_memory_bound(tmp_path):
    """A run over 12,000 rows of 112 px (450 MB decoded) needs no more anonymous memory than a run over 120
    rows, within 150 MB (the run-to-run noise of a torch process here is ~50 MB): the images stay in the page
    cache, and nothing copies the set (the folder reader before the cache held ~4 copies: +2.4 GB measured for
    +440 MB of pixels)."""
    src = _folder(tmp_path / "src", n=12, size=32)
    peaks = {}
    for name, repeat in (("small", 10), ("big", 1000)):
        rows = [(f"src/{p}", c) for p, c in _listing_files(src)] * repeat
        manifest = tmp_path / f"{name}.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
        assert main(["data", "cache", str(manifest), "--image-size", "112", "--no-progress"]) == 0
        cache = next(c for c in list_caches() if c.name.startswith(f"{name}.csv-112px"))
        assert cache.count == len(rows)
        rc, peaks[name], out = _peak_anon_mb(
            [sys.executable, "-m", "resnetlab", "train", "--out", str(tmp_path / f"run-{name}"), "--no-progress",
             "model.name=resnet20", "data.dataset=folder", f"data.path={manifest}", "data.image_size=112",
             "data.val_size=0", f"data.test_fraction={0.2 if name == 'small' else 0.01}", "train.epochs=1",
             "train.max_steps=3", "train.batch_size=16", "train.eval_batch_size=32", "train.precision=fp32",
             "train.tta=false"], dict(os.environ, PYTHONPATH=SRC))
        assert rc == 0, out
        assert "decoded in" not in out  # the run after `data cache` starts without decoding
    big = next(c for c in list_caches() if c.name.startswith("big.csv-112px"))
    assert big.bytes > 400 * 2**20  # several times the bound
    assert peaks["big"] < peaks["small"] + 150, f"{peaks} MB of anonymous memory for {big.bytes / 2**20:.0f} MB of images"


def test_precomputed_linear_probe_matches_the_full_forward_path(tmp_path):
    """The head trained on cached features reaches the full path's accuracy (same task, same seed)."""
    from conftest import write_cifar10_bin
    write_cifar10_bin(tmp_path / "data", per_file=60)
    assert main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "pre"), "--no-progress",
                 "data.verify=false", "model.name=resnet20", "train.epochs=6", "train.batch_size=30", "data.val_size=0",
                 "train.precision=fp32", "train.tta=false"]) == 0
    folder = _folder(tmp_path / "new", n=240, classes=4, size=32, seed=11)
    results = {}
    for cached in ("true", "false"):
        out = tmp_path / f"probe-{cached}"
        assert main(["finetune", "--weights", str(tmp_path / "pre" / "best.safetensors"), "--data", str(folder),
                     "--strategy", "linear-probe", "--out", str(out), "--no-progress", "train.epochs=6",
                     "train.precision=fp32", "data.augment.crop_padding=0", "data.augment.flip=false",
                     "train.early_stopping.patience=0", "train.batch_size=32", "optim.lr=0.1",
                     f"finetune.cached_features={cached}"]) == 0
        results[cached] = json.loads((out / "linear-probe-results.json").read_text())
        assert resume_is_a_whole_checkpoint(out / "linear-probe-best.safetensors")
    a, b = results["true"]["test"]["top1"], results["false"]["test"]["top1"]
    assert a > 0.6 and abs(a - b) <= 0.05, results
    assert results["true"]["feature_s"] > 0 and results["true"]["train_pflop"] < results["false"]["train_pflop"] / 4


def resume_is_a_whole_checkpoint(path: Path) -> bool:
    """A probe's checkpoint holds the whole network (loadable by eval/predict), not the head alone."""
    import resnetlab
    model, meta = resnetlab.load_model(path)
    return meta.arch == "resnet20" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_a_disk_without_room_for_the_cache_stops_the_build_with_one_line_and_leaves_nothing(tmp_path, capsys,
                                                                                           monkeypatch):
    """The image file's blocks are reserved before any decoding (posix_fallocate): on a disk that fills meanwhile
    the build stops here, where a sparse file written through memory maps died of SIGBUS or hung its pool."""
    import errno
    from resnetlab.data import cache as cache_mod
    root = _folder(tmp_path / "f", n=12)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache_mod.os, "posix_fallocate", full)
    assert main(["data", "cache", str(root), "--image-size", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reserve the 9.2 kB the decoded cache needs (No space left on device)" in err and "\n" not in err
    assert "RESNETLAB_CACHE" in err
    assert not list((cache_dir() / "decoded").glob(".*build*"))
    assert not [c for c in list_caches() if c.source == str(root.resolve())]


def test_a_decoding_worker_that_dies_ends_the_build_with_one_line(tmp_path, capsys, monkeypatch):
    from resnetlab.data import cache as cache_mod
    root = _folder(tmp_path / "f", n=24)

    def dies(*args):
        os.kill(os.getpid(), signal.SIGBUS)  # what a memory-mapped write on a full disk does
    monkeypatch.setattr(cache_mod, "load_uint8", dies)  # the forked workers inherit it
    t = time.time()
    assert main(["data", "cache", str(root), "--image-size", "16", "--workers", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a decoding worker died" in err and "\n" not in err and time.time() - t < 60
    assert not list((cache_dir() / "decoded").glob(".*build*"))
    assert not [c for c in list_caches() if c.source == str(root.resolve())]


def test_leftovers_of_killed_builds_are_listed_and_removed(tmp_path, capsys):
    root = _folder(tmp_path / "f", n=12)
    assert main(["data", "cache", str(root), "--image-size", "16", "--no-progress"]) == 0
    name = next(c.name for c in list_caches() if c.source == str(root.resolve()))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = cache_dir() / "decoded" / f".{name}.build-{int(dead.stdout)}"
    left.mkdir()
    (left / "images.u8").write_bytes(b"\0" * 5_000_000)
    capsys.readouterr()
    assert main(["data", "ls"]) == 0
    out = capsys.readouterr().out
    assert f"{left.name}: 0.01 GB left by a killed build of {name}" in out
    assert main(["data", "rm", name]) == 0
    out = capsys.readouterr().out
    assert f"removed {name}" in out and "left by a killed build" in out
    assert not left.exists() and name not in [c.name for c in list_caches()]


def test_labels_follow_one_rule_in_manifests_and_shards(tmp_path):
    """Non-empty printable class names of bounded length, or integers; integers ordered by value in every source."""
    root = _folder(tmp_path / "f", n=6)
    files = _listing_files(root)
    bad = {"null.jsonl": json.dumps({"path": files[0][0], "label": None}) + "\n",
           "list.jsonl": json.dumps({"path": files[0][0], "label": ["a"]}) + "\n",
           "long.csv": f"path,label\n{files[0][0]},{'x' * 201}\n"}
    for name, text in bad.items():
        (root / name).write_text(text)
        with pytest.raises(UserError, match=r"label .* is not a class name") as e:
            cached_set(root / name, 16, progress=False, log=lambda *a: None)
        assert "\n" not in str(e.value) and name in str(e.value)
    (root / "latin1.csv").write_bytes(f"path,label\n{files[0][0]},caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.csv: not UTF-8 text \(byte 0xe9"):
        cached_set(root / "latin1.csv", 16, progress=False, log=lambda *a: None)
    # numeric labels: "2" before "10" in a manifest as in shards
    numbered = [(p, {"c0": "10", "c1": "2", "c2": "33"}[c]) for p, c in files]
    (root / "num.jsonl").write_text("".join(json.dumps({"path": p, "label": int(c)}) + "\n" for p, c in numbered))
    ds, _ = cached_set(root / "num.jsonl", 16, progress=False, log=lambda *a: None)
    assert ds.classes == ["2", "10", "33"]
    # a shard whose label is a superscript digit, and one whose label is megabytes long
    (tmp_path / "odd").mkdir()
    shard = tmp_path / "odd" / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (rel, c) in enumerate(files):
            tar.add(root / rel, arcname=f"k{i}.png")
            data = ("\u00b2" if c == "c0" else c).encode()
            info = tarfile.TarInfo(f"k{i}.cls")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds, _ = cached_set(tmp_path / "odd", 16, progress=False, log=lambda *a: None)
    assert ds.classes == ["c1", "c2", "\u00b2"]
    (tmp_path / "big").mkdir()
    with tarfile.open(tmp_path / "big" / "s.tar", "w") as tar:
        tar.add(root / files[0][0], arcname="k.png")
        info = tarfile.TarInfo("k.cls")
        info.size = 5_000_000
        tar.addfile(info, io.BytesIO(b"a" * info.size))
    with pytest.raises(UserError, match=r"k.cls: a label of 5,000,000 bytes is not a class name"):
        cached_set(tmp_path / "big", 16, progress=False, log=lambda *a: None)


def test_shard_members_bigger_than_any_image_are_skipped_without_being_read(tmp_path, monkeypatch):
    from resnetlab.data import sources
    root = _folder(tmp_path / "f", n=6)
    files = _listing_files(root)
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "s.tar", "w") as tar:
        for i, (rel, c) in enumerate(files):
            tar.add(root / rel, arcname=f"k{i}.png")
            info = tarfile.TarInfo(f"k{i}.txt")
            info.size = len(c)
            tar.addfile(info, io.BytesIO(c.encode()))
        info = tarfile.TarInfo("big.png")
        info.size = 3_000_000
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
        info = tarfile.TarInfo("big.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"c0"))
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 2_000_000)
    reads = []
    real = tarfile.ExFileObject.read
    monkeypatch.setattr(tarfile.ExFileObject, "read", lambda self, *a: reads.append((self.name, a)) or real(self, *a))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\), e.g. s.tar/big \(big.png: 3,000,000 bytes"):
        ds, cache = cached_set(tmp_path / "s", 16, workers=1, progress=False, log=lambda *a: None)
    assert len(ds) == 6 and cache.meta.bad == ["s.tar/big"]
    assert reads and not [r for r in reads if r[0] == "big.png"]  # refused from its size: not a byte read
    assert not [r for r in reads if r[0].endswith(".png") and r[1] in ((), (-1,), (None,))]  # images read lazily


def test_data_rm_of_a_linked_cache_removes_the_link_and_says_so(tmp_path, capsys):
    root = _folder(tmp_path / "f", n=6)
    assert main(["data", "cache", str(root), "--image-size", "12", "--no-progress"]) == 0
    name = next(c.name for c in list_caches() if c.source == str(root.resolve()))
    moved = tmp_path / "elsewhere"
    (cache_dir() / "decoded" / name).rename(moved)
    (cache_dir() / "decoded" / name).symlink_to(moved, target_is_directory=True)
    capsys.readouterr()
    assert main(["data", "rm", name]) == 0
    assert f"removed {name} (a link; {moved} itself is kept)" in capsys.readouterr().out
    assert not (cache_dir() / "decoded" / name).exists() and (moved / "meta.json").is_file()


def test_warnings_on_the_command_line_are_one_line_each(tmp_path):
    """A skipped image and an empty class folder: each one `warning:` line on stderr, no Python warning format."""
    root = _folder(tmp_path / "f", n=12)
    (root / "c1" / "zz-broken.png").write_bytes(b"\x89PNG not really")
    (root / "empty").mkdir()
    env = dict(os.environ, RESNETLAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-m", "resnetlab", "data", "cache", str(root), "--image-size", "16",
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr
    assert sum(line.startswith("warning: ") and "skipped 1 unreadable image(s)" in line for line in lines) == 1
    assert sum(line.startswith("warning: ") and "without images: empty" in line for line in lines) == 1


def test_a_complete_cache_on_a_read_only_mount_is_used_and_a_missing_one_is_one_line(tmp_path):
    """The lock needs write access; a read-only cache folder needs none, since nothing can be built there."""
    import shutil as sh
    root = _folder(tmp_path / "f", n=12)
    cache = tmp_path / "cache"
    env = dict(os.environ, RESNETLAB_CACHE=str(cache), PYTHONPATH=SRC)
    cmd = [sys.executable, "-m", "resnetlab", "data", "cache", str(root), "--no-progress", "--image-size"]
    first = subprocess.run(cmd + ["16"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    if sh.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unshare here to mount the cache read-only")

    def read_only(size: str) -> subprocess.CompletedProcess:
        script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(cache), *cmd, size],
                              capture_output=True, text=True, env=env, timeout=120)
    again = read_only("16")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1], again.stderr
    missing = read_only("20")
    err = missing.stderr.strip()
    assert missing.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert "cannot use this cache (it does not exist)" in err and "is read-only" in err and "RESNETLAB_CACHE" in err
