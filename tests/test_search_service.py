"""`cliplab serve`: the JSON API on good and bad requests, and the page end to end in headless Chromium.

The collection is written by the test: the synthetic colour task's images (8 colours, 6 each) plus a
group of three near-duplicates of one crowded scene, captioned in a manifest. The model is the
``micro`` architecture trained here for 100 steps on other colour-task images (about 5 s on one
core), enough to rank images of the queried colour first.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import reference
import torch
from PIL import Image, ImageEnhance

import cliplab
from cliplab.cli.main import main
from cliplab.data.synthetic import zero_shot_tasks
from cliplab.search.searcher import Limits, Searcher
from cliplab.search.service import create_app
from cliplab.training.loss import ClipLoss
from cliplab.transforms import image_transform

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
TEMPLATE = "a photo of a {} object."
DUPLICATES = ["scene-original.png", "scene-brighter.png", "scene-recompressed.jpg"]


def train_colour_model(steps: int = 100) -> torch.nn.Module:
    """micro, trained contrastively on (colour-task image, "a photo of a <colour> object.") pairs."""
    (task,) = zero_shot_tasks(image_size=64, per_class=64, names=["colour"], seed=1)
    preprocess = image_transform(32)
    images = torch.stack([preprocess(im) for im in task.images])
    tokens = cliplab.tokenize([TEMPLATE.format(task.classnames[y]) for y in task.labels], context_length=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = cliplab.create_model("micro").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = ClipLoss()
    try:
        for _ in range(steps):
            batch = torch.randperm(len(images))[:32]
            loss = loss_fn(model.encode_image(images[batch], normalize=True),
                           model.encode_text(tokens[batch], normalize=True), model.logit_scale)  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model_dir = cliplab.save(train_colour_model(), root / "model")
    (task,) = zero_shot_tasks(image_size=64, per_class=6, names=["colour"], seed=11)
    rows = ["filepath,caption"]
    for i, (image, label) in enumerate(zip(task.images, task.labels, strict=True)):
        colour = task.classnames[label]
        image.save(root / f"{colour}-{i:02d}.png")
        rows.append(f"{colour}-{i:02d}.png,{TEMPLATE.format(colour)}")
    (scene,) = zero_shot_tasks(image_size=64, per_class=1, names=["count"], seed=5)[0].images[-1:]
    scene.save(root / DUPLICATES[0])
    ImageEnhance.Brightness(scene).enhance(1.08).save(root / DUPLICATES[1])
    scene.save(root / DUPLICATES[2], quality=80)
    rows += [f"{name},a crowded scene ({name.split('-')[1].split('.')[0]})" for name in DUPLICATES]
    (root / "collection.csv").write_text("\n".join(rows) + "\n")
    query = io.BytesIO()
    scene.resize((96, 96), Image.Resampling.BICUBIC).save(query, format="JPEG", quality=90)
    (root / "query.jpg").write_bytes(query.getvalue())

    assert main(["embed", "--model", str(model_dir), "--data", str(root / "collection.csv"),
                 "--out", str(root / "emb"), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert main(["index", str(root / "emb"), "--no-progress"]) == 0
    limits = Limits(max_k=50, max_upload_bytes=200_000, max_image_pixels=1_000_000, max_query_chars=200)
    searcher, note = Searcher.open(root / "emb", limits=limits)
    assert note == ""
    return root, searcher


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    return TestClient(create_app(served[1]))


def _sources(answer: dict) -> list[str]:
    return [Path(r["source"]).name for r in answer["results"]]


# ---------------------------------------------------------------------------------------- good requests


def test_text_query_ranks_the_colour_first_and_repeats_hit_the_cache(client):
    first = client.get("/api/search", params={"q": "a photo of a red object.", "k": 6})
    assert first.status_code == 200
    answer = first.json()
    assert not answer["cached"] and len(answer["results"]) == 6
    assert all(name.startswith("red-") for name in _sources(answer)[:4]), _sources(answer)
    result = answer["results"][0]
    assert set(result) == {"id", "score", "caption", "source", "width", "height", "thumbnail"}
    assert result["caption"] == "a photo of a red object." and (result["width"], result["height"]) == (64, 64)
    again = client.get("/api/search", params={"q": "a  photo of a red object. ", "k": 6}).json()
    assert again["cached"] and again["results"] == answer["results"]


def test_image_upload_finds_its_near_duplicates_first(served, client):
    root, _ = served
    with open(root / "query.jpg", "rb") as f:
        response = client.post(
            "/api/search/image", params={"k": 5}, files={"file": ("query.jpg", f, "image/jpeg")}
        )
    assert response.status_code == 200
    assert sorted(_sources(response.json())[:3]) == sorted(DUPLICATES)


def test_similar_by_id_and_thumbnails(client):
    top = client.get("/api/search", params={"q": "a photo of a blue object.", "k": 1}).json()["results"][0]
    similar = client.get(f"/api/similar/{top['id']}", params={"k": 4}).json()
    assert similar["results"][0]["id"] == top["id"] and similar["results"][0]["score"] == pytest.approx(
        1, abs=1e-3
    )
    thumb = client.get(top["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    info = client.get("/api/info").json()
    assert info["n"] == 51 and info["kind"] == "exact"
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_concurrent_queries_equal_serial_ones(served):
    searcher = served[1]
    queries = [
        f"a photo of a {c} object." for c in ("red", "green", "blue", "yellow", "purple", "orange")
    ] * 3
    serial = [[r["id"] for r in searcher.search_text(q + " ", 5)["results"]] for q in queries]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(
            pool.map(lambda q: [r["id"] for r in searcher.search_text(q + "  ", 5)["results"]], queries)
        )
    assert parallel == serial


# ---------------------------------------------------------------------------------------- bad requests


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144M pixels in about 20 kB
    return buffer.getvalue()


def test_bad_requests_get_4xx_with_a_message(client, monkeypatch):
    png, bomb = io.BytesIO(), _bomb()
    Image.effect_noise((64, 64), 60).convert("RGB").save(png, format="PNG")
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    cases = {
        "k zero": (client.get, "/api/search", {"params": {"q": "a cat", "k": 0}}, 422, "k must be between"),
        "k too big": (client.get, "/api/search", {"params": {"q": "a cat", "k": 51}}, 422, "between 1 and 50"),
        "k not a number": (client.get, "/api/search", {"params": {"q": "a cat", "k": "ten"}}, 422, ""),
        "empty query": (client.get, "/api/search", {"params": {"q": "   "}}, 422, "empty"),
        "missing query": (client.get, "/api/search", {}, 422, ""),
        "over-long query": (client.get, "/api/search", {"params": {"q": "x" * 201}}, 422, "limit is 200"),
        "oversized upload": (client.post, "/api/search/image",
                             {"files": {"file": ("big.png", b"\x89PNG" + b"\0" * 300_000, "image/png")}}, 413, "limit"),
        "non-image upload": (client.post, "/api/search/image",
                             {"files": {"file": ("notes.txt", b"hello, not an image", "text/plain")}}, 415, "not an image"),
        "empty upload": (client.post, "/api/search/image", {"files": {"file": ("e.png", b"", "image/png")}}, 422, "empty"),
        "decompression bomb": (client.post, "/api/search/image",
                               {"files": {"file": ("bomb.png", bomb, "image/png")}}, 413, "pixels"),
        "truncated image": (client.post, "/api/search/image",
                            {"files": {"file": ("cut.png", png.getvalue()[: len(png.getvalue()) // 2], "image/png")}}, 422, "decoded"),
        "no file": (client.post, "/api/search/image", {}, 422, ""),
        "unknown id": (client.get, "/api/similar/51", {}, 404, "no image 51"),
        "negative id": (client.get, "/api/thumbnail/-1", {}, 404, "no image -1"),
    }  # fmt: skip
    for name, (call, url, kwargs, status, words) in cases.items():
        response = call(url, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert words in str(response.json()["detail"]), (name, response.text)
    assert all(w * h <= 1_000_000 for w, h in decoded)  # the bomb was refused from its header


def test_thumbnail_urls_never_reach_the_file_system(client):
    for url in ["/api/thumbnail/../../../../etc/passwd", "/api/thumbnail/..%2F..%2F..%2Fetc%2Fpasswd",
                "/api/thumbnail/%2Fetc%2Fpasswd", "/api/thumbnail/1%2F..%2F..%2Fetc%2Fpasswd",
                "/api/thumbnail/1e3", "/static/../../../../etc/passwd", "/static/..%2F..%2Fservice.py",
                "/static/%2e%2e/%2e%2e/searcher.py"]:  # fmt: skip
        response = client.get(url)
        assert 400 <= response.status_code < 500, (url, response.status_code)
        assert b"root:" not in response.content and b"import" not in response.content, url


# ---------------------------------------------------------------------------------------- the page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(served[1]), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_page_in_headless_chromium(served, server):
    if not CHROMIUM.exists():
        reference.missing(
            "chromium", "the search page's browser test (make setup installs Debian's chromium)"
        )
    playwright = reference.require("playwright", "the search page's browser test")
    from playwright.sync_api import sync_playwright

    assert playwright
    root = served[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server + "/")
            page.fill("#q", "a photo of a green object.")
            page.press("#q", "Enter")
            page.wait_for_selector('#results[data-state="done"]')
            sources = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.source)")
            assert len(sources) == 24 and all(Path(s).name.startswith("green-") for s in sources[:4]), (
                sources[:6]
            )
            assert "results for" in page.inner_text("#status")
            page.wait_for_function(
                "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "search-text.png"))

            page.set_input_files("#file", str(root / "query.jpg"))
            page.wait_for_selector('#results[data-query="image query.jpg"][data-state="done"]')
            sources = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.source)")
            assert sorted(Path(s).name for s in sources[:3]) == sorted(DUPLICATES)
            page.wait_for_function(
                "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(ARTIFACTS / "search-image.png"))

            first = page.query_selector(".result")
            clicked = first.get_attribute("data-id")
            first.click()
            page.wait_for_selector(f'#results[data-query="images like #{clicked}"][data-state="done"]')
            assert page.query_selector(".result").get_attribute("data-id") == clicked
        finally:
            browser.close()


def test_chunked_upload_over_the_limit_is_cut_off(server):
    """No Content-Length: the server stops reading once the body passes the limit and answers 413."""
    host, port = server.removeprefix("http://").split(":")
    chunk = b"\0" * 65536
    sent, reply = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")  # fmt: skip
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < 1000:  # 64 MB offered
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += 1
                conn.setblocking(False)
                try:
                    reply += conn.recv(65536)
                except BlockingIOError:
                    pass
                conn.setblocking(True)
                if reply:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        conn.settimeout(10)
        try:
            while b"\r\n\r\n" not in reply:
                data = conn.recv(65536)
                if not data:
                    break
                reply += data
        except (ConnectionResetError, TimeoutError):
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 1000
