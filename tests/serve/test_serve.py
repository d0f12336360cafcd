"""serve: the real server (``dhmd-pipeline serve`` in a subprocess, on a loopback port) over a tiny
checkpoint trained here, driven over HTTP and in headless Chromium.

One module fixture extracts four short espeak-ng clips and trains a tiny DHMD for one epoch; another
starts the server with a token, a 1 MB upload limit, a duration limit between the lengths of two
clips, one prediction at a time and a queue of one.  The tests post a new clip (same fields and score
as ``predict --json``), every kind of bad input (each gets its status and message, and the server
goes on), 20 requests at once (all 200 or 503, then /health), and open the page in Chromium.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.serve.uploads import display_name, sniff_container

# (name, text, label, split, k): clip k of tests/inference/test_predict.py, so a full run makes each once
TRAIN = [
    ("good_one", "What a lovely and wonderful day.", 2.4, "train", 0),
    ("bad_one", "This was a terrible boring film.", -2.2, "train", 1),
    ("good_two", "I enjoyed every minute of it.", 1.8, "train", 2),
    ("mid_one", "It was an ordinary movie.", 0.2, "valid", 4),
]
TINY = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "model.dictionary_size=16",
        "train.epochs=1", "train.batch_size=4"]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREDICT_FIELDS = {"clip", "status", "transcript", "score", "label_7", "label_2", "unimodal", "edges_homo",
                  "edges_hetero", "top_atoms", "face_frames", "frames", "flags", "time_s"}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _duration(path: Path) -> float:
    from extractors.decode import probe

    return probe(path).duration_s


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, make_clip) -> Path:
    """A tiny DHMD trained for one epoch on four extracted clips, through the CLI."""
    root = tmp_path_factory.mktemp("serve_train")
    videos = root / "videos"
    videos.mkdir()
    for name, text, _, _, k in TRAIN:
        src = make_clip(text, expression=0.8 if "good" in name else -0.8 if "bad" in name else 0.0,
                        voice="en-us" if k % 2 else "en-us+f3", seed=k)
        shutil.copy(src, videos / f"{name}.mp4")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "text", "split"])
        for name, text, label, split, _ in TRAIN:
            w.writerow([name, label, text, split])
    res = _invoke(["extract", str(videos), "--out", str(root / "cache"), "--labels", str(root / "labels.csv")])
    assert res.exit_code == 0, res.output
    res = _invoke(["train", "--data", str(root / "cache"), "--out", str(root / "run"),
                   *[a for s in TINY for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    return root / "run" / "best.pt"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, make_clip) -> dict[str, Path]:
    """A good short clip, a longer one, and bad inputs: corrupt, silent, text, audio only (wav, m4a)."""
    root = tmp_path_factory.mktemp("serve_clips")
    good = make_clip("The actors were brilliant and funny.", expression=0.6, seed=11)
    long = root / "long.mp4"                                  # the good clip twice over
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "1", "-i", str(good), "-c", "copy",
                    str(long)], check=True, timeout=60)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(good.read_bytes()[:3000])              # mp4 signature, no moov index
    text = root / "notes.mp4"
    text.write_text("these are my notes, not a video\n" * 20)
    silent = make_clip("Nobody can hear this sentence.", audio=False, seed=12)
    wav, m4a = root / "voice.wav", root / "voice.m4a"
    for out, codec in ((wav, ["-c:a", "pcm_s16le"]), (m4a, ["-c:a", "aac"])):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(good), "-vn", *codec, str(out)],
                       check=True, timeout=60)
    big = root / "big.mp4"
    big.write_bytes(good.read_bytes()[:64] + os.urandom(int(1.5 * 2**20)))
    return {"good": good, "long": long, "corrupt": corrupt, "text": text, "silent": silent, "wav": wav,
            "m4a": m4a, "big": big}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint: Path, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """``dhmd-pipeline serve`` in a subprocess; yields (base URL, its TMPDIR, ``predict --json`` of the
    good clip, run here while the server loads its models); stopped with SIGTERM."""
    good_s, long_s = _duration(clips["good"]), _duration(clips["long"])
    assert long_s > good_s + 1.0, (good_s, long_s)
    tmpdir = tmp_path_factory.mktemp("serve_tmp")
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    sets = ["serve.max_upload_mb=1", f"serve.max_duration_s={(good_s + long_s) / 2:.2f}",
            "serve.max_concurrent=1", "serve.queue_size=1", "serve.queue_timeout_s=120"]
    log_path = tmpdir.parent / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--checkpoint", str(checkpoint),
                                 "--port", str(port), "--token", TOKEN, *[a for s in sets for a in ("--set", s)]],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        res = _invoke(["predict", str(clips["good"]), "--checkpoint", str(checkpoint), "--json"])
        assert res.exit_code == 0, res.output
        predicted = json.loads(res.output[res.output.index("["):])[0]
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if requests.get(f"{base}/health", headers=AUTH, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, f"serve did not start:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield base, tmpdir, predicted
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()
    assert list(tmpdir.iterdir()) == [], "the private upload folder outlived the server"


def _post(base: str, path: Path, name: str | None = None, explain: bool = False, headers=AUTH, timeout=180):
    with open(path, "rb") as f:
        return requests.post(f"{base}/predict" + ("?explain=1" if explain else ""), headers=headers,
                             files={"file": (name or path.name, f, "application/octet-stream")}, timeout=timeout)


def _uploads_left(tmpdir: Path) -> list[Path]:
    return [p for d in tmpdir.glob("dhmd-serve-*") for p in d.rglob("*")]


# ------------------------------------------------------------------------------------ unit

def test_sniff_container_and_display_name() -> None:
    assert sniff_container(b"\x00\x00\x00\x20ftypisom" + bytes(20)) == ".mp4"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(20)) == ".webm"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI LIST") == ".avi"
    assert sniff_container(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_container(b"hello, this is text") is None
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\clip.mp4") == "clip.mp4"
    assert display_name("a\x00b\nc.mp4") == "abc.mp4"
    assert display_name("") == "upload"


# ------------------------------------------------------------------------------------ HTTP

def test_predict_matches_predict_json(server, clips: dict[str, Path]) -> None:
    base, tmpdir, want = server
    r = _post(base, clips["good"], name="../../../escape.mp4", explain=True)
    assert r.status_code == 200, r.text
    got = r.json()
    assert PREDICT_FIELDS <= set(got), set(got) ^ PREDICT_FIELDS
    assert got["clip"] == "escape.mp4"            # the name is echoed as text, never used as a path
    assert not list(tmpdir.parent.rglob("escape*"))
    assert got["explanation_png"].startswith("data:image/png;base64,")
    import base64

    png = base64.b64decode(got["explanation_png"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert _uploads_left(tmpdir) == []             # the upload is removed after the answer

    assert set(got) - {"explanation_png"} == set(want)
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    for key in ("transcript", "label_7", "label_2", "face_frames", "frames", "flags"):
        assert got[key] == want[key], key
    for m in ("text", "audio", "video"):
        assert got["unimodal"][m] == pytest.approx(want["unimodal"][m], abs=1e-4)
    for space in ("edges_homo", "edges_hetero"):
        assert sum(got[space], []) == pytest.approx(sum(want[space], []), abs=1e-4)


def test_health_model_and_page(server, checkpoint: Path) -> None:
    base, _, _ = server
    h = requests.get(f"{base}/health", headers=AUTH, timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    m = requests.get(f"{base}/model", headers=AUTH, timeout=10).json()
    assert m["task"] == "regression" and m["checkpoint"] == str(checkpoint)
    assert m["spec"]["source"] == "cache" and m["spec"]["text_model"]
    assert m["metrics"]["val_metric"] == "MAE" and "MAE" in m["metrics"]["valid"]
    page = requests.get(f"{base}/", headers=AUTH, timeout=10)
    assert page.status_code == 200 and 'id="file-input"' in page.text
    for name in ("page.js", "page.css"):
        r = requests.get(f"{base}/static/{name}", headers=AUTH, timeout=10)
        assert r.status_code == 200 and len(r.text) > 500
        assert "http://" not in r.text and "https://" not in r.text     # nothing fetched from elsewhere
    assert "http://" not in page.text and "https://" not in page.text
    assert requests.get(f"{base}/static/..%2Fapp.py", headers=AUTH, timeout=10).status_code == 404


def test_token_required(server, clips: dict[str, Path]) -> None:
    base, _, _ = server
    for url in ("/health", "/model", "/", "/static/page.js"):
        r = requests.get(base + url, timeout=10)
        assert r.status_code == 401 and "token" in r.json()["error"], url
    assert requests.get(f"{base}/health", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert _post(base, clips["good"], headers={}).status_code == 401
    assert requests.get(f"{base}/health?token={TOKEN}", timeout=10).status_code == 200
    page = requests.get(f"{base}/?token={TOKEN}", timeout=10)      # the page gets the token as a cookie
    assert page.status_code == 200
    assert requests.get(f"{base}/model", cookies=page.cookies, timeout=10).status_code == 200


@pytest.mark.parametrize("kind, status, words", [
    ("long", 422, "too long"),
    ("corrupt", 422, "corrupt"),
    ("silent", 422, "no audio"),
    ("text", 415, "not a video file"),
    ("wav", 415, "not a video file"),
    ("m4a", 415, "no video stream"),
    ("big", 413, "too large"),
])
def test_bad_uploads(server, clips: dict[str, Path], kind: str, status: int, words: str) -> None:
    base, tmpdir, _ = server
    r = _post(base, clips[kind])
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "failed" and words in body["error"], body
    assert str(tmpdir) not in body["error"]          # the server's paths never appear in an answer
    assert requests.get(f"{base}/health", headers=AUTH, timeout=10).status_code == 200
    assert _uploads_left(tmpdir) == []


def test_bad_forms(server) -> None:
    base, _, _ = server
    r = requests.post(f"{base}/predict", headers=AUTH, data=b"raw bytes", timeout=10)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]
    r = requests.post(f"{base}/predict", headers=AUTH, files={"other": ("x.mp4", b"abc")}, timeout=10)
    assert r.status_code == 400 and "no file in the form" in r.json()["error"]
    r = requests.post(f"{base}/predict", headers=AUTH, files={"file": ("x.mp4", b"")}, timeout=10)
    assert r.status_code == 400 and "empty file" in r.json()["error"]


def _read_response(s: socket.socket, first: bytes = b"") -> bytes:
    """The whole HTTP response (headers and a Content-Length body) from ``s``."""
    data = first
    s.settimeout(60)
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                return data
        more = s.recv(65536)
        if not more:
            return data
        data += more


def _raw_request(base: str, head: str, body_chunks, read_after_each: bool) -> tuple[bytes, int]:
    """Send ``head`` then the chunks over a socket; stop sending once the server has answered.

    Returns (the answer, how many body bytes had been sent)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode())
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if read_after_each:
                s.settimeout(0.05)
                try:
                    data = s.recv(65536)
                    if data:
                        return _read_response(s, data), sent
                except (socket.timeout, BlockingIOError):
                    pass
        return _read_response(s), sent


def test_oversized_upload_is_refused_before_it_is_read(server) -> None:
    base, _, _ = server
    boundary = "XyZ"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()
    # a declared 500 MB body: 413 after the headers, with only the first bytes sent
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {500 * 2**20}\r\n\r\n")
    answer, sent = _raw_request(base, head, [part + b"\0" * 1000], read_after_each=False)
    assert answer.startswith(b"HTTP/1.1 413") and b"too large" in answer, answer[:300]
    # chunked, no length declared: refused while streaming, long before the 8 MB are sent
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = 64 * 1024
    chunks = [f"{len(part):x}\r\n".encode() + part + b"\r\n"]
    chunks += [f"{block:x}\r\n".encode() + b"\0" * block + b"\r\n"] * 128
    answer, sent = _raw_request(base, head, chunks, read_after_each=True)
    assert answer.startswith(b"HTTP/1.1 413") and b"too large" in answer, answer[:300]
    assert sent < 4 * 2**20, sent
    assert requests.get(f"{base}/health", headers=AUTH, timeout=10).status_code == 200


def test_twenty_parallel_requests(server, clips: dict[str, Path]) -> None:
    base, tmpdir, _ = server
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda k: _post(base, clips["good"], name=f"p{k}.mp4", timeout=300), range(20)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers]
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes   # one runs, one waits, the rest: 503
    assert all("busy" in a.json()["error"] for a in answers if a.status_code == 503)
    scores = {round(a.json()["score"], 6) for a in answers if a.status_code == 200}
    assert len(scores) == 1                      # the same clip, the same answer, however it queued
    h = requests.get(f"{base}/health", headers=AUTH, timeout=10)
    assert h.status_code == 200 and h.json()["admitted"] == 0
    assert _uploads_left(tmpdir) == []


# ------------------------------------------------------------------------------------ browser

def _chromium():
    """A headless Chromium driven by Selenium, or a skip naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver; make install does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (make install installs it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1900", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.mark.slow
def test_page_in_headless_chromium(server, clips: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = server
    browser = _chromium()
    try:
        browser.get(f"{base}/?token={TOKEN}")
        WebDriverWait(browser, 30).until(lambda b: "model" in b.find_element(By.ID, "model-line").text
                                         and "regression" in b.find_element(By.ID, "model-line").text)
        browser.find_element(By.ID, "file-input").send_keys(str(clips["good"]))
        WebDriverWait(browser, 180).until(
            lambda b: b.execute_script("const i = document.getElementById('explanation');"
                                       "return i.complete && i.naturalWidth > 0 && !document.getElementById('result').hidden;")
            or b.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text == ""
        score = browser.find_element(By.ID, "score").text
        assert -3.0 <= float(score) <= 3.0
        assert browser.find_element(By.ID, "label7").text in (
            "highly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive",
            "highly positive")
        assert browser.find_element(By.ID, "transcript").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#edges-homo td")) == 9
        assert browser.execute_script("return document.getElementById('explanation').naturalWidth") > 300
        shot = os.environ.get("DHMD_SERVE_SCREENSHOT")      # docs/serve-page.png is made this way
        if shot:
            browser.save_screenshot(shot)

        # the webcam: Chromium's fake camera and microphone (a test pattern and a beep), recorded by
        # MediaRecorder as WebM without a duration, uploaded and predicted (no face, no words: flagged)
        browser.execute_script("document.getElementById('status').textContent = '';")
        browser.find_element(By.ID, "cam-start").click()
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "rec-start").is_enabled())
        browser.find_element(By.ID, "rec-start").click()
        time.sleep(2.5)
        browser.find_element(By.ID, "rec-stop").click()
        WebDriverWait(browser, 180).until(lambda b: "done" in b.find_element(By.ID, "status").text
                                          or b.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "status").text.startswith("webcam-")
        answer = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
        assert answer["clip"].endswith(".webm") and answer["status"] == "ok"
        assert -3.0 <= answer["score"] <= 3.0 and answer["frames"] > 0
    finally:
        browser.quit()


# ------------------------------------------------------------------------------------ command line

def test_serve_refuses_a_busy_port_and_a_missing_checkpoint(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", "--port", str(port), "--checkpoint", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in res.output, res.output
    res = CliRunner().invoke(main, ["serve", "--port", str(_free_port()), "--checkpoint", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "x.pt: checkpoint not found" in res.output, res.output


def test_serve_finds_the_demo_model_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no --checkpoint, serve takes the newest best.pt as predict does, which includes the demo's
    (demo.runs_dir/best.pt): here an unreadable one, so the refusal names the file it found."""
    from pipeline.config import load_config

    monkeypatch.chdir(tmp_path)
    demo_best = Path(load_config().demo.runs_dir) / "best.pt"
    demo_best.parent.mkdir(parents=True)
    demo_best.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(main, ["serve", "--port", str(_free_port())])
    assert res.exit_code == 2 and f"{demo_best}: not a readable dhmd-pipeline checkpoint" in res.output, res.output
