"""`serve`: real HTTP on 127.0.0.1 with the bundled MobileNetV2 and a head trained on tiny generated images."""
from __future__ import annotations

import builtins
import csv
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from conftest import REPO, make_class_tree, noise_image
from PIL import Image

import pipeline
from pipeline.heads.classifier import Classifier
from pipeline.store import versions

uvicorn = pytest.importorskip("uvicorn", reason="serve needs the [serve] extra: FastAPI, uvicorn, python-multipart")
pytest.importorskip("fastapi", reason="serve needs the [serve] extra: FastAPI, uvicorn, python-multipart")
from pipeline.serving import serve as serve_module  # noqa: E402
from pipeline.serving.serve import ServeLimits, create_app, server_options  # noqa: E402


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = make_class_tree(root / "data", per_class=5)
    store = pipeline.featurize(data, "mobilenet_v2_quant", out=root / "feat", progress=False)
    return root, data, pipeline.train(store, head="logreg", C=1.0)


@contextmanager
def running(clf, limits=None, verbose_model=False):
    """The app served by uvicorn in a thread on a free loopback port, with the connection guards `serve` uses;
    yields (base url, server state)."""
    app = create_app(clf, limits, verbose_model)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **server_options(limits or ServeLimits())))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class GatedModel:
    """The head's sklearn model, whose predict_proba waits for `gate` once armed; records batch sizes."""

    def __init__(self, model):
        self.model, self.classes_ = model, model.classes_
        self.gate, self.armed, self.batches = threading.Event(), False, []

    def predict_proba(self, X):
        if self.armed:
            self.batches.append(len(X))
            self.gate.wait(30)
        return self.model.predict_proba(X)


def gated(clf):
    model = GatedModel(clf.model)
    return Classifier(model, clf.classes_, clf.spec, clf.metrics, clf.versions), model


def files_of(paths):
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def wait_until(cond):
    for _ in range(3000):
        if cond():
            return
        time.sleep(0.01)
    pytest.fail("condition never reached")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in 57 bytes (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_served_probabilities_equal_what_score_writes(head, tmp_path):
    root, data, clf = head
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, src in enumerate([data / "red" / "red_0.jpg", data / "blue" / "blue_1.jpg"]):
        (folder / src.name).write_bytes(src.read_bytes())
    noise_image(55, (500, 375), (30, 30, 230)).save(folder / "photo.jpg", quality=90)
    pipeline.score(clf, folder, tmp_path / "pred.csv", cache=tmp_path / "cache", progress=False)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    with running(clf) as (url, _):
        multi = httpx.post(f"{url}/predict", files=files_of(sorted(folder.iterdir())), timeout=60)
        raw = httpx.post(f"{url}/predict", params={"filename": "photo.jpg"},
                         content=(folder / "photo.jpg").read_bytes(), headers={"content-type": "image/jpeg"})
    assert multi.status_code == 200 and raw.status_code == 200, (multi.text, raw.text)
    served = multi.json()["predictions"] + raw.json()["predictions"]
    assert [p["filename"] for p in served] == ["blue_1.jpg", "photo.jpg", "red_0.jpg", "photo.jpg"]
    for p in served:
        row = rows[p["filename"]]
        assert p["prediction"] == row["prediction"]
        assert set(p["probabilities"]) == {"blue", "red"}
        for c, v in p["probabilities"].items():
            assert abs(v - float(row[c])) <= 1e-6
        assert abs(p["ood_distance"] - float(row["ood_distance"])) <= 1e-5 and p["ood"] == int(row["ood"])


def test_answers_carry_ood_fields_and_reject_ood_answers_unknown_for_flagged_images(head, tmp_path):
    from pipeline.serving.predictors import HeadPredictor

    root, data, clf = head
    x = np.arange(120)[None, :].repeat(90, 0)
    g = ((x // 6) % 2 * 255).astype(np.uint8)  # stripes: nothing like the red and blue noise it was trained on
    Image.fromarray(np.stack([g, 255 - g, g // 2], -1)).save(tmp_path / "stripes.png")
    images = [tmp_path / "stripes.png", data / "red" / "red_0.jpg"]
    with running(clf) as (url, _):
        plain = httpx.post(f"{url}/predict", files=files_of(images), timeout=60).json()["predictions"]
    with running(HeadPredictor(clf, reject_ood=True)) as (url, _):
        rejecting = httpx.post(f"{url}/predict", files=files_of(images), timeout=60).json()["predictions"]
        info = httpx.get(f"{url}/model").json()
    assert [(p["filename"], p["ood"]) for p in plain] == [("stripes.png", 1), ("red_0.jpg", 0)]
    assert plain[0]["ood_distance"] > info["ood"]["threshold"] >= plain[1]["ood_distance"]
    assert [p["prediction"] for p in rejecting] == ["unknown", plain[1]["prediction"]]
    assert rejecting[0]["probabilities"] == plain[0]["probabilities"] and info["ood"]["reject_ood"] is True
    old = Classifier(clf.model, clf.classes_, clf.spec, clf.metrics)  # no summary: a head saved before them
    with running(old) as (url, _):
        answer = httpx.post(f"{url}/predict", files=files_of(images[1:]), timeout=60).json()["predictions"][0]
    assert "ood" not in answer and "ood_distance" not in answer and answer["prediction"] == plain[1]["prediction"]


def test_reject_ood_is_refused_for_exports_and_heads_without_a_summary(head, tmp_path):
    from pipeline.cli import main
    from pipeline.errors import UsageError
    from pipeline.serving.predictors import load_predictor

    root, data, clf = head
    with pytest.raises(UsageError, match="exports carry no out-of-distribution summary"):
        load_predictor(tmp_path, reject_ood=True)
    old = Classifier(clf.model, clf.classes_, clf.spec, clf.metrics).save(tmp_path / "old.head.npz")
    assert main(["serve", str(old), "--reject-ood", "--port", "1"]) == 2  # refused before listening


def test_health_model_and_docs_without_file_system_paths(head):
    root, _, clf = head
    with running(clf) as (url, _):
        health = httpx.get(f"{url}/health")
        model = httpx.get(f"{url}/model")
        docs = httpx.get(f"{url}/docs")
        openapi = httpx.get(f"{url}/openapi.json").json()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = model.json()
    assert info["classes"] == ["blue", "red"] and info["head"] == "logreg"
    assert info["feature_spec"]["dim"] == 1280 and info["feature_spec"]["backbone"] == "mobilenet_v2_quant"
    assert info["versions"]["trained_with"]["tf-feature-pipeline"] and info["metrics"]["n_train"] == 10
    assert "features" in clf.metrics and "features" not in info["metrics"]  # the training store's location
    assert info["limits"]["max_images"] == ServeLimits().max_images
    assert "path" not in info["feature_spec"]["source"]
    assert str(root) not in model.text and str(REPO) not in model.text and '"/' not in model.text
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "multipart/form-data" in json.dumps(openapi["paths"]["/predict"])


def test_body_over_the_limit_is_413_declared_or_streamed(head):
    _, data, clf = head
    with running(clf, ServeLimits(max_body_bytes=2000)) as (url, _):
        declared = httpx.post(f"{url}/predict", content=b"x" * 2001)

        def chunks():  # chunked upload, no Content-Length: the cap holds while streaming
            for _ in range(4):
                yield b"y" * 1000

        streamed = httpx.post(f"{url}/predict", content=chunks())
        ok = httpx.post(f"{url}/predict", content=img_under(1900))
    assert declared.status_code == 413 and declared.json()["code"] == "body_too_large"
    assert streamed.status_code == 413 and streamed.json()["code"] == "body_too_large"
    assert ok.status_code == 200  # the server goes on serving


def img_under(limit: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, "PNG")
    assert len(buf.getvalue()) < limit
    return buf.getvalue()


def test_pixels_over_the_limit_are_422_too_many_pixels_before_decoding(head):
    _, _, clf = head
    small = io.BytesIO()
    Image.new("RGB", (200, 100)).save(small, "PNG")
    with running(clf, ServeLimits(max_pixels=10_000)) as (url, _):
        over = httpx.post(f"{url}/predict", content=small.getvalue())
    with running(clf) as (url, _):
        bomb = httpx.post(f"{url}/predict", content=png_header_only(40000, 40000))  # default limit
        after = httpx.post(f"{url}/predict", content=img_under(10_000))
    for r in (over, bomb):
        assert r.status_code == 422 and r.json()["code"] == "too_many_pixels"
        assert r.json()["errors"][0]["reason"] == "too_many_pixels"
    assert after.status_code == 200


def test_bad_images_get_featurize_reason_codes_and_bodies_leak_nothing(head, tmp_path):
    _, data, clf = head
    good = (data / "red" / "red_0.jpg").read_bytes()
    bad = {"page.jpg": b"<html>not found</html>", "empty.jpg": b"", "cut.jpg": good[: len(good) // 2],
           "script.png": b"#!/bin/sh\nrm -rf /\n"}
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    (folder / "good.jpg").write_bytes(good)
    run = pipeline.featurize(folder, "mobilenet_v2_quant", out=tmp_path / "f", progress=False, report=True)
    featurize_reasons = {s["path"]: s["reason"] for s in run.skipped}
    with running(clf) as (url, _):
        r = httpx.post(f"{url}/predict", files=[("files", (n, c, "image/jpeg")) for n, c in
                                                 [("good.jpg", good), *bad.items()]])
        after = httpx.post(f"{url}/predict", content=good)
    assert r.status_code == 422
    body = r.json()
    assert {e["filename"]: e["reason"] for e in body["errors"]} == featurize_reasons
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 4] and body["code"] == body["errors"][0]["reason"]
    text = r.text
    for leak in (str(tmp_path), str(REPO), "Traceback", "site-packages", versions()["pillow"], versions()["numpy"]):
        assert leak not in text
    assert after.status_code == 200


def test_images_per_request_over_the_limit_is_413(head):
    _, data, clf = head
    paths = sorted((data / "red").iterdir())[:3]
    with running(clf, ServeLimits(max_images=2)) as (url, _):
        over = httpx.post(f"{url}/predict", files=files_of(paths))
        ok = httpx.post(f"{url}/predict", files=files_of(paths[:2]))
        none = httpx.post(f"{url}/predict", headers={"content-type": "multipart/form-data; boundary=x"},
                          content=b"--x--\r\n")
    assert over.status_code == 413 and over.json()["code"] == "too_many_images"
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    assert none.status_code == 400 and none.json()["code"] == "no_image"


@pytest.mark.slow
def test_a_request_over_its_time_limit_is_504_and_the_server_recovers(head):
    _, data, clf = head
    slow, model = gated(clf)
    with running(slow, ServeLimits(timeout_s=2.0)) as (url, _):
        model.armed = True  # the next network call waits until the gate opens
        r = httpx.post(f"{url}/predict", content=(data / "red" / "red_1.jpg").read_bytes(), timeout=30)
        model.gate.set()
        after = httpx.post(f"{url}/predict", content=(data / "red" / "red_1.jpg").read_bytes(), timeout=30)
    assert r.status_code == 504 and r.json()["code"] == "timeout"
    assert after.status_code == 200 and after.json()["predictions"][0]["prediction"] == "red"


def test_requests_beyond_the_in_flight_limit_get_503_with_retry_after(head):
    _, data, clf = head
    slow, model = gated(clf)
    image = (data / "blue" / "blue_0.jpg").read_bytes()
    with running(slow, ServeLimits(max_in_flight=2)) as (url, state):
        model.armed = True
        with httpx.Client(timeout=30) as client:
            results = []
            threads = [threading.Thread(target=lambda: results.append(client.post(f"{url}/predict", content=image)))
                       for _ in range(2)]
            for t in threads:
                t.start()
            wait_until(lambda: state.in_flight == 2)
            refused = client.post(f"{url}/predict", content=image)
            model.gate.set()
            for t in threads:
                t.join()
    assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in results] == [200, 200]


def test_concurrent_requests_are_answered_in_shared_batches(head):
    _, data, clf = head
    slow, model = gated(clf)
    paths = sorted(data.rglob("*.jpg"))[:8]
    with running(slow) as (url, state):
        model.armed = True
        with httpx.Client(timeout=30) as client:
            results = {}
            threads = [threading.Thread(target=lambda p=p: results.__setitem__(
                p.name, client.post(f"{url}/predict", content=p.read_bytes()))) for p in paths]
            for t in threads:
                t.start()
            wait_until(lambda: model.batches and state.batcher._queue.qsize() == 8 - model.batches[0])
            model.gate.set()  # the first batch ran with what had arrived; every other request waits in the queue
            for t in threads:
                t.join()
    # the first network call took what had arrived, the second every request queued behind it
    assert len(model.batches) <= 2 and sum(model.batches) == 8
    for p in paths:
        got = results[p.name].json()["predictions"][0]["probabilities"]
        want = clf.predict_proba([str(p)])[0]
        np.testing.assert_allclose([got["blue"], got["red"]], want, atol=1e-6)


def test_requests_never_touch_the_file_system_and_names_are_only_echoed(head, tmp_path, monkeypatch):
    _, data, clf = head
    image = (data / "red" / "red_2.jpg").read_bytes()
    names = ["../../etc/passwd", "..\\..\\win.ini", "/abs/x.jpg", "C:\\x.jpg", "a.jpg\x00.php", "..", "n" * 300,
             "\u2024\u2024/x.jpg"]
    opened = []

    def refuse(*args, **kw):
        opened.append(args[0] if args else kw)
        raise PermissionError("no file access while serving")

    with running(clf) as (url, _):
        with httpx.Client(timeout=30) as client:
            monkeypatch.setattr(builtins, "open", refuse)
            monkeypatch.setattr(io, "open", refuse)
            monkeypatch.setattr(os, "open", refuse)
            multi = client.post(f"{url}/predict", files=[("files", (n, image, "image/jpeg")) for n in names])
            raw = client.post(f"{url}/predict", params={"filename": "../../x.jpg"}, content=image)
            monkeypatch.undo()
    assert opened == []
    assert multi.status_code == 200 and raw.status_code == 200
    echoed = [p["filename"] for p in multi.json()["predictions"]]
    assert len(echoed) == len(names) and all(0 < len(n) <= 255 for n in echoed)
    assert raw.json()["predictions"][0]["filename"] == "../../x.jpg"
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
def test_cli_serve_answers_on_loopback(head, tmp_path):
    root, data, clf = head
    model = clf.save(tmp_path / "m.joblib")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(model), "--port", str(port),
                             "--max-images", "3", "--max-connections", "7", "--verbose-model"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=(data / "blue" / "blue_2.jpg").read_bytes())
        info = httpx.get(f"http://127.0.0.1:{port}/model").json()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert r.status_code == 200 and r.json()["predictions"][0]["prediction"] == "blue", out
    assert info["limits"]["max_images"] == 3 and info["limits"]["max_connections"] == 7
    assert info["versions"]["serving_with"]["python"] == versions()["python"]  # --verbose-model
    assert f"http://127.0.0.1:{port}" in out


@pytest.mark.parametrize("kw, match", [({"max_images": 0}, "max_images must be at least 1, got 0"),
                                       ({"max_pixels": 10**9}, "at most featurize's limit"),
                                       ({"timeout_s": 0}, "timeout_s must be > 0")])
def test_limits_that_cannot_work_are_refused_with_the_value(kw, match):
    with pytest.raises(pipeline.UsageError, match=match):
        ServeLimits(**kw)


def test_exif_alpha_palette_and_16_bit_images_are_served_as_score_reads_them(head, tmp_path):
    """RELIABILITY C03: the EXIF, alpha, palette and bit-depth policies are the same through HTTP as through
    `score` (one decoder): each tricky file gets the probabilities score writes for it."""
    _, _, clf = head
    folder = tmp_path / "tricky"
    folder.mkdir()
    photo = noise_image(7, (90, 60), (230, 30, 30))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif, quality=92)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(folder / "alpha.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(folder / "deep.png")
    pipeline.score(clf, folder, tmp_path / "pred.csv", cache=tmp_path / "cache", progress=False)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    assert set(rows) == {"rotated.jpg", "alpha.png", "palette.png", "deep.png"}
    with running(clf) as (url, _):
        r = httpx.post(f"{url}/predict", files=files_of(sorted(folder.iterdir())), timeout=60)
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        for c, v in p["probabilities"].items():
            assert abs(v - float(rows[p["filename"]][c])) <= 1e-6, p["filename"]


# ---- the server as a whole: budgets, connections, /model, the port (issue 27 item 4, issue 29 item 3) ----
class GatedDecode:
    """serve's decode_all, held at a gate once armed (the request keeps its budget shares meanwhile)."""

    def __init__(self, real, state_of):
        self.real, self.state_of = real, state_of
        self.gate, self.armed, self.entered, self.max_pixels_used = threading.Event(), False, 0, 0

    def __call__(self, *args):
        self.entered += 1
        self.max_pixels_used = max(self.max_pixels_used, self.state_of().pixels.used)
        if self.armed:
            self.gate.wait(30)
        return self.real(*args)


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("budget", ["pixels", "body bytes"])
def test_a_spent_budget_answers_503_with_retry_after_and_the_next_request_200(head, monkeypatch, budget):
    """RELIABILITY D07 (5): requests beyond the server-wide pixel or body budget get 503 quickly, never OOM."""
    _, _, clf = head
    image = png_of(400, 300)  # 120,000 pixels
    limits = (ServeLimits(max_pixels=150_000, max_pixels_in_flight=150_000, queue_wait_s=0.5) if budget == "pixels"
              else ServeLimits(max_body_bytes=len(image) + 10, max_body_bytes_in_flight=len(image) + 10,
                               queue_wait_s=0.5))
    state = {}
    gated_decode = GatedDecode(serve_module.decode_all, lambda: state["server"])
    monkeypatch.setattr(serve_module, "decode_all", gated_decode)
    with running(clf, limits) as (url, server):
        state["server"] = server
        gated_decode.armed = True
        with httpx.Client(timeout=60) as client:
            first = []
            holder = threading.Thread(target=lambda: first.append(client.post(f"{url}/predict", content=image)))
            holder.start()
            wait_until(lambda: gated_decode.entered == 1)  # the first request holds the budget, decoding
            refused = client.post(f"{url}/predict", content=image)
            gated_decode.armed = False
            gated_decode.gate.set()
            holder.join()
            after = client.post(f"{url}/predict", content=image)
        left = (server.pixels.used, server.body_bytes.used)
    assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    assert refused.headers["retry-after"] == "1" and budget.split()[0] in refused.json()["message"]
    assert first[0].status_code == 200 and after.status_code == 200
    assert left == (0, 0)  # every share was given back
    assert gated_decode.entered == 2  # the refused request decoded nothing


@pytest.mark.slow
def test_a_timed_out_request_keeps_its_shares_until_its_decode_really_ends(head, monkeypatch):
    """A 504 does not stop the decode thread, so its pixels stay counted until the thread is done."""
    _, _, clf = head
    image = png_of(400, 300)
    state = {}
    gated_decode = GatedDecode(serve_module.decode_all, lambda: state["server"])
    monkeypatch.setattr(serve_module, "decode_all", gated_decode)
    with running(clf, ServeLimits(timeout_s=1.0)) as (url, server):
        state["server"] = server
        gated_decode.armed = True
        timed_out = httpx.post(f"{url}/predict", content=image, timeout=60)
        held = (server.pixels.used, server.body_bytes.used)
        gated_decode.gate.set()
        wait_until(lambda: server.pixels.used == 0 and server.body_bytes.used == 0)
        gated_decode.armed = False
        after = httpx.post(f"{url}/predict", content=image, timeout=60)
    assert timed_out.status_code == 504 and held == (400 * 300, len(image))
    assert after.status_code == 200


def test_a_request_waits_for_the_pixel_budget_within_its_queue_wait(head, monkeypatch):
    _, _, clf = head
    image = png_of(400, 300)
    state = {}
    gated_decode = GatedDecode(serve_module.decode_all, lambda: state["server"])
    monkeypatch.setattr(serve_module, "decode_all", gated_decode)
    with running(clf, ServeLimits(max_pixels=150_000, max_pixels_in_flight=150_000, queue_wait_s=30)) as (url, server):
        state["server"] = server
        gated_decode.armed = True
        with httpx.Client(timeout=60) as client:
            results = []
            threads = [threading.Thread(target=lambda: results.append(client.post(f"{url}/predict", content=image)))
                       for _ in range(2)]
            for t in threads:
                t.start()
            wait_until(lambda: gated_decode.entered == 1 and server.in_flight == 2)
            time.sleep(0.3)
            waiting = gated_decode.entered  # the second waits for the budget, not in a decode thread
            gated_decode.gate.set()
            for t in threads:
                t.join()
    assert waiting == 1 and [r.status_code for r in results] == [200, 200]


@pytest.mark.slow
def test_concurrent_large_images_stay_within_the_pixel_budget(head, monkeypatch):
    """Bounded load: 12 clients at once send a 1200x1000 PNG to a server whose budget holds two of them;
    each is answered 200, or 503 with Retry-After, the budget is never exceeded, and the server then answers 200."""
    _, _, clf = head
    image = png_of(1200, 1000)
    state = {}
    counting = GatedDecode(serve_module.decode_all, lambda: state["server"])
    monkeypatch.setattr(serve_module, "decode_all", counting)
    limits = ServeLimits(max_pixels=1_200_000, max_pixels_in_flight=2_400_000, queue_wait_s=0.2)
    with running(clf, limits) as (url, server):
        state["server"] = server
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=12)) as client:
            results = []
            threads = [threading.Thread(target=lambda: results.append(client.post(f"{url}/predict", content=image)))
                       for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = client.post(f"{url}/predict", content=image)
    codes = [r.status_code for r in results]
    assert len(codes) == 12 and set(codes) <= {200, 503} and 200 in codes, codes
    assert all(r.headers["retry-after"] == "1" for r in results if r.status_code == 503)
    assert counting.max_pixels_used <= 2_400_000  # seen from inside every decode
    assert after.status_code == 200


@pytest.mark.slow
def test_a_slow_header_connection_is_closed_by_the_server(head):
    """RELIABILITY D07 (4): a slow-loris client is closed by the server's header timeout; the next request is served."""
    _, _, clf = head
    with running(clf, ServeLimits(header_timeout_s=1.0)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        closed, deadline, i = False, time.monotonic() + 30, 0
        head_bytes = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        while not closed and time.monotonic() < deadline:
            try:
                slow.sendall(head_bytes[i:i + 1])
                slow.settimeout(0.2)
                closed = slow.recv(1) == b""
            except socket.timeout:
                i += 1
            except OSError:
                closed = True
        slow.close()
        after = httpx.post(f"{url}/predict", content=png_of(64, 48))
    assert closed and after.status_code == 200


def test_model_shows_only_this_packages_version_unless_verbose(head):
    """RELIABILITY D09: /model tells no attacker the exact library versions unless --verbose-model."""
    _, _, clf = head
    with running(clf) as (url, _):
        plain = httpx.get(f"{url}/model")
    with running(clf, verbose_model=True) as (url, _):
        verbose = httpx.get(f"{url}/model").json()["versions"]
    shown = plain.json()["versions"]
    assert shown == {"trained_with": {"tf-feature-pipeline": clf.versions["tf-feature-pipeline"]},
                     "serving_with": {"tf-feature-pipeline": versions()["tf-feature-pipeline"]}}
    for exact in (versions()["python"], versions()["numpy"], versions()["scikit-learn"]):
        assert f'"{exact}"' not in plain.text
    assert verbose["serving_with"] == versions() and verbose["trained_with"] == clf.versions


def test_limits_beyond_one_request_are_listed_in_model(head):
    _, _, clf = head
    with running(clf, ServeLimits(max_connections=9, header_timeout_s=3)) as (url, _):
        limits = httpx.get(f"{url}/model").json()["limits"]
    assert limits["max_connections"] == 9 and limits["header_timeout_s"] == 3
    assert limits["max_pixels_in_flight"] == ServeLimits().max_pixels_in_flight


@pytest.mark.slow
def test_serve_on_a_busy_port_exits_1_naming_the_port_before_announcing(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    (tmp_path / "any.head.npz").write_bytes(b"")  # a path that exists: the port is checked before the file is read
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline", "serve", str(tmp_path / "any.head.npz"),
                            "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert r.returncode == 1, r.stderr
    assert f"port {port} is in use: pass --port" in r.stderr
    assert "serving" not in r.stdout and "Errno" not in r.stderr


@pytest.mark.parametrize("kw, match", [
    ({"max_pixels_in_flight": 1000}, "max_pixels_in_flight must be at least max_pixels"),
    ({"max_body_bytes_in_flight": 10}, "max_body_bytes_in_flight must be at least max_body_bytes"),
    ({"header_timeout_s": 0}, "header_timeout_s must be > 0"), ({"max_connections": 0}, "max_connections")])
def test_server_wide_limits_that_cannot_work_are_refused(kw, match):
    with pytest.raises(pipeline.UsageError, match=match):
        ServeLimits(**kw)


def test_every_limit_is_a_serve_flag():
    from dataclasses import fields

    from pipeline.cli.commands import build_parser

    args = build_parser().parse_args(["serve", "m.head.npz", "--verbose-model"])
    assert {f.name for f in fields(ServeLimits)} <= set(vars(args)) and args.verbose_model
