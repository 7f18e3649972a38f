"""A service you can expose: the defects a hostile but fair client found, pinned (pixel bombs in tiny uploads,
odd top_k, aborted uploads, formats outside the documented ones, slow clients, media-type case, unbounded
settings, docs assets), API keys, the Host allowlist, CORS and security headers — with the app in-process
(httpx through TestClient) and with a real `resnetlab serve` process."""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import png_bytes, ready_client
from resnetlab import load, testing
from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.serving.app import create_app
from resnetlab.serving.settings import ServeSettings
from resnetlab.testing import ServeProcess


def webp_bomb(side: int = 6300) -> bytes:
    """34 bytes that decode to 6300 x 6300 (39.7 MP: under the per-image limit)."""
    return testing.webp_bomb(side)


@pytest.fixture(scope="module")
def classifier(small_checkpoint):
    return load(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def good_png() -> bytes:
    return png_bytes((np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3))


def client_for(clf, base_url: str = "http://127.0.0.1", **settings) -> TestClient:
    return ready_client(create_app(clf, ServeSettings(**settings)), base_url)


@pytest.fixture(scope="module")
def client(classifier):
    c = client_for(classifier)
    yield c
    c.__exit__(None, None, None)


def one_line(r: httpx.Response) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


# ------------------------------------------------------------------------------------------- input
def test_many_tiny_bombs_are_refused_from_their_headers(client):
    files = [(f"f{i}", (f"b{i}.webp", webp_bomb(), "image/webp")) for i in range(16)]
    t0 = time.perf_counter()
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 413 and "per request" in one_line(r)
    assert time.perf_counter() - t0 < 2.0  # 16 x 39.7 MP were never decoded


def test_a_bomb_in_flight_does_not_block_the_event_loop(classifier):
    """Two 39.7 MP WebPs (inside the per-request budget) are decoded in a worker thread while /healthz keeps
    being answered. Pillow holds the GIL for stretches of a decode this large (its WebP frame copy and RGBA
    to RGB conversion), so a single poll can wait up to ~1 s on 2 cores (docs/results/serving.md); what the loop must
    not do is wait for the decode: polls go on being answered throughout and most of them at once."""
    with ServeProcess(classifier.path, capture=False) as server, httpx.Client(timeout=10) as poller:
        body = [webp_bomb(), webp_bomb()]
        done = []

        def post():
            files = {f"f{i}": (f"b{i}.webp", b, "image/webp") for i, b in enumerate(body)}
            t0 = time.perf_counter()
            done.append(httpx.post(server.url + "/v1/predict", files=files, timeout=60).status_code)
            done.append(time.perf_counter() - t0)
        t = threading.Thread(target=post)
        t.start()
        time.sleep(0.15)
        polls = []
        while t.is_alive():
            t0 = time.perf_counter()
            assert poller.get(server.url + "/healthz").status_code == 200
            polls.append(time.perf_counter() - t0)
            time.sleep(0.05)
        t.join()
    status, request_s = done
    assert status == 200
    # A loop blocked by the decode answers one or two polls, each as slow as the decode (~1.3 s here).
    assert len(polls) >= 5 and sorted(polls)[len(polls) // 2] < 0.1, (request_s, polls)


@pytest.mark.parametrize("top_k", ["²", "1" * 5000, "0", "-1", "٣"])
def test_top_k_is_ascii_digits_only(client, good_png, top_k):
    r = client.post("/v1/predict", params={"top_k": top_k}, content=good_png)
    assert r.status_code == 400 and "top_k must be a positive integer" in one_line(r)


@pytest.mark.parametrize("fmt", ["ICO", "EPS", "PPM"])
def test_formats_outside_the_documented_ones_never_reach_a_decoder(client, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, fmt)
    r = client.post("/v1/predict", content=buf.getvalue())
    assert r.status_code == 415 and "not an image in a known format" in one_line(r)


def test_media_types_are_case_insensitive(client, good_png):
    boundary = "XyZ123"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + good_png + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/v1/predict", content=body, headers={"content-type": f"Multipart/Form-Data; boundary={boundary}"})
    assert r.status_code == 200 and r.json()["predictions"][0]["file"] == "a.png"


@pytest.mark.parametrize("flag,value", [("--max-body-mb", "inf"), ("--max-body-mb", "nan"), ("--read-timeout-s", "inf"),
                                        ("--max-wait-ms", "1e300")])
def test_unbounded_settings_are_one_line(small_checkpoint, capsys, flag, value):
    assert main(["serve", str(small_checkpoint), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: serve:") and "Traceback" not in err


def test_docs_page_needs_nothing_from_elsewhere_and_can_be_off(client, classifier):
    page = client.get("/docs")
    assert page.status_code == 200 and "/v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "<script" not in page.text
    off = client_for(classifier, docs=False)
    try:
        assert off.get("/docs").status_code == 404 and off.get("/openapi.json").status_code == 404
    finally:
        off.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------- access
def test_api_keys_on_v1_and_metrics_rotate_with_the_key_file(classifier, good_png, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nalpha-key\n")
    c = client_for(classifier, api_key_file=str(keys))
    try:
        for path in ("/v1/model", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401 and "API key" in one_line(r) and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/model", headers={"Authorization": "Bearer alpha-key"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "alpha-key"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "alpha-kex"}).status_code == 401
        assert c.post("/v1/predict", content=good_png, headers={"X-API-Key": "alpha-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page is open; it asks for the key
        keys.write_text("beta-key\n")  # rotation: a new file, read on the next request
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert c.get("/v1/model", headers={"X-API-Key": "alpha-key"}).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "beta-key"}).status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_a_key_file_caught_half_written_keeps_the_keys_last_read_for_access_and_docs(classifier, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alpha-key\n")
    c = client_for(classifier, api_key_file=str(keys))
    try:
        keys.write_text("")  # an editor truncates before it writes
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert c.get("/v1/model", headers={"X-API-Key": "alpha-key"}).status_code == 200
        assert c.get("/docs").status_code == 401  # with keys, the API's description is behind them too
        page = c.get("/docs", headers={"X-API-Key": "alpha-key"})
        assert page.status_code == 200 and "Send the API key" in page.text
        assert c.get("/openapi.json").status_code == 401
    finally:
        c.__exit__(None, None, None)


def test_the_service_hands_freed_heap_memory_back_once_it_is_quiet_and_never_during_a_request(
        classifier, good_png, monkeypatch):
    import resnetlab.serving.service as app_module
    assert app_module.malloc_trim() is not None  # glibc (Linux): the real malloc_trim is found
    calls = []
    monkeypatch.setattr(app_module, "TRIM_EVERY_S", 0.05)
    monkeypatch.setattr(app_module, "malloc_trim", lambda: calls.append)

    def calls_after(seconds: float, at_least: int = 0) -> int:
        deadline = time.time() + 10
        while len(calls) < at_least and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(seconds)
        return len(calls)
    c = client_for(classifier)
    try:
        assert calls_after(0.3) == 0  # no request yet: nothing to hand back
        assert c.post("/v1/predict", content=good_png).status_code == 200
        assert calls_after(0.3, at_least=1) == 1 and calls == [0]  # once per quiet spell, not every period
        metrics = c.app.state.service.metrics
        metrics.work_begins()  # a request in flight: no trim however long it takes
        assert calls_after(0.3) == 1
        metrics.work_ends()
        assert calls_after(0.3, at_least=2) == 2
    finally:
        c.__exit__(None, None, None)


def test_a_public_bind_needs_a_key_or_an_explicit_no_auth(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNETLAB_API_KEY", raising=False)
    with pytest.raises(UserError, match="not loopback.*without an API key.*--no-auth"):
        ServeSettings(host="0.0.0.0").validate()
    ServeSettings(host="0.0.0.0", no_auth=True).validate()
    monkeypatch.setenv("RESNETLAB_API_KEY", "k")
    ServeSettings(host="0.0.0.0").validate()
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(UserError, match="holds no key"):
        ServeSettings(api_key_file=str(empty)).validate()


def test_host_allowlist_refuses_a_rebound_name(classifier):
    c = client_for(classifier)  # loopback: only the loopback names
    try:
        assert c.get("/healthz", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "localhost"}).status_code == 200
        r = c.get("/v1/model", headers={"host": "attacker.example:8000"})
        assert r.status_code == 403 and "not served here" in one_line(r)
    finally:
        c.__exit__(None, None, None)


def test_cors_only_for_configured_origins_and_security_headers_everywhere(classifier):
    c = client_for(classifier, cors_origins=["https://app.example"])
    try:
        r = c.get("/v1/model", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/v1/model", headers={"origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        pre = c.options("/v1/predict", headers={"origin": "https://app.example",
                                                "access-control-request-method": "POST"})
        assert pre.status_code == 204 and "x-api-key" in pre.headers["access-control-allow-headers"]
        for path in ("/", "/healthz", "/v1/model", "/nowhere"):
            h = c.get(path).headers
            assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in h["content-security-policy"]
    finally:
        c.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------- real process
def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def test_slow_idle_and_aborting_clients_against_a_real_server(classifier):
    server = ServeProcess(classifier.path, "--header-timeout-s", "1", "--read-timeout-s", "1")
    try:
        host, port = "127.0.0.1", server.port
        with socket.create_connection((host, port), timeout=5) as idle:  # says nothing at all
            t0 = time.perf_counter()
            assert idle.recv(100) == b"" and time.perf_counter() - t0 < 3
        with socket.create_connection((host, port), timeout=5) as half:  # half a request line
            half.sendall(b"GET /heal")
            t0 = time.perf_counter()
            assert half.recv(100) == b"" and time.perf_counter() - t0 < 3
        with socket.create_connection((host, port), timeout=10) as drip:  # headers, then a byte at a time
            drip.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                         f"Content-Length: 1000\r\n\r\n".encode())
            t0, answer = time.perf_counter(), b""
            drip.settimeout(0.3)
            while time.perf_counter() - t0 < 5 and not answer:
                drip.sendall(b"x")
                try:
                    answer = drip.recv(1000)
                except socket.timeout:
                    pass
            assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - t0 < 3
        with socket.create_connection((host, port), timeout=5) as abort:  # promises 100 kB, sends 10, leaves
            abort.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n".encode()
                          + b"0123456789")
        for bad in (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n",  # a NUL in a header
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n"):  # two Hosts
            with socket.create_connection((host, port), timeout=5) as raw:
                raw.sendall(bad)
                answer = b""
                while chunk := raw.recv(4096):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), answer
            assert json.loads(body)["detail"].startswith("malformed HTTP request"), answer
        time.sleep(0.5)
        text = _metrics(server.url)
        assert 'status="500"' not in text
        with pytest.raises(urllib.error.HTTPError):  # and the server still answers normally
            urllib.request.urlopen(urllib.request.Request(server.url + "/v1/predict", data=b"nope"), timeout=10)
        assert "server" not in {k.lower() for k in urllib.request.urlopen(server.url + "/healthz").headers}
    finally:
        code, out = server.stop()
    assert "Traceback" not in out and "ClientDisconnect" not in out, out[-3000:]


def test_a_real_server_with_a_key_from_the_environment(classifier, good_png):
    env = dict(os.environ, RESNETLAB_API_KEY="s3cret")
    server = ServeProcess(classifier.path, env=env)
    try:
        req = urllib.request.Request(server.url + "/v1/predict", data=good_png, headers={"content-type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401 and "API key" in json.loads(e.value.read())["detail"]
        req.add_header("Authorization", "Bearer s3cret")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["predictions"][0]["top"]
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- the CLI
def test_deeply_nested_checkpoint_metadata_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file
    import torch
    path = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnetlab": "[" * 100_000 + "]" * 100_000})
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err


def test_eval_of_a_pth_says_what_it_is(tmp_path, capsys):
    import torch
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, path)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a PyTorch weights file" in err and "resnetlab finetune --weights" in err


def test_predict_classifies_the_good_files_and_reports_the_bad(small_checkpoint, good_png, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(good_png)
    (folder / "b.png").write_bytes(b"not a png")
    (folder / "c.webp").write_bytes(webp_bomb(7000))  # 49 MP: over the per-image limit
    (folder / "d.png").write_bytes(good_png)
    assert main(["predict", str(small_checkpoint), str(folder), "--json"]) == 2
    captured = capsys.readouterr()
    rows = {os.path.basename(r["file"]): r for r in json.loads(captured.out)}
    assert rows["a.png"]["top"] == rows["d.png"]["top"] and "error" not in rows["a.png"]
    assert "cannot read image" in rows["b.png"]["error"] and "over the limit" in rows["c.webp"]["error"]
    assert "b.png" in captured.err and "2 of 4 file(s) could not be classified" in captured.err


def test_a_60_second_soak_has_no_5xx_and_no_gross_leak(small_checkpoint):
    """benchmarks/soak.py for one minute at 70 % of the measured capacity: good, bad, oversized, slow and
    aborted clients; no 5xx seen by clients or counted by /metrics. A minute is still warm-up for memory (the
    30-minute soak in docs/results/serving.md grew 10 % after its first 5 minutes, in steps, as latency peaked), so
    here RSS only has to stay within 25 % of its first window: a leak per request would pass that in seconds."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    r = subprocess.run([sys.executable, str(script), str(small_checkpoint), "--minutes", "1", "--window-s", "20",
                        "--max-rss-growth", "0.25"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "PASS: client 5xx 0, server 5xx 0" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_sigterm_ends_a_slow_upload_with_503_and_exits_promptly(classifier):
    import signal
    server = ServeProcess(classifier.path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
        slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n0123")
        time.sleep(0.3)
        t0 = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        answer = b""
        while chunk := slow.recv(4096):  # the whole response; the server closes the connection after it
            answer += chunk
        code, out = server.stop()
    assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer
    assert time.perf_counter() - t0 < 10 and code in (0, -signal.SIGTERM) and "Traceback" not in out
