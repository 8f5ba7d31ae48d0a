"""`python -m crossmodal serve` on gunicorn: concurrent clients served without an error, bodies over the limit
refused, several workers refused with the embedded store. The sustained load figures (50 clients, 60 s) come
from benchmarks/bench_serve.py."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "serve-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: bytes, timeout: float = 60) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from crossmodal.service import IngestItem, Service
    from crossmodal.settings import Settings

    data = tmp_path_factory.mktemp("serve")
    service = Service(Settings(data_dir=str(data), model="demo-shapes"))
    service.ingest([IngestItem(text=t) for t in ("a red circle", "a blue star", "a green square")], "served")
    service.store.close()  # the server's process opens the store next
    port = free_port()
    log = open(data / "server.log", "wb")  # a pipe nobody reads would fill up and block the server's logging
    process = subprocess.Popen([sys.executable, "-m", "crossmodal", "serve", "--port", str(port), "--store", str(data),
                                "--model", "demo-shapes", "--threads", "8"], cwd=ROOT,
                               env={**os.environ, "CROSSMODAL_API_KEY": KEY, "HF_HUB_OFFLINE": "1"},
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/viewer", timeout=2).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, (data / "server.log").read_text()[-3000:]
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_concurrent_clients_are_all_served(server):
    body = json.dumps({"query": "a red circle", "collection": "served", "target": "text", "top_k": 2}).encode()
    status, headers, first = post(server, "/v1/search", body)  # the model loads here
    assert status == 200 and headers.get("Server", "").startswith("gunicorn"), headers
    assert first["results"][0]["payload"]["text"] == "a red circle"

    def client(_):
        answers = []
        stop = time.monotonic() + 3
        while time.monotonic() < stop:
            answers.append(post(server, "/v1/search", body)[0])
        return answers

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = [s for answers in pool.map(client, range(20)) for s in answers]
    assert len(statuses) >= 20 and set(statuses) == {200}


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    connection.putrequest("POST", "/v1/search")
    connection.putheader("Authorization", f"Bearer {KEY}")
    connection.putheader("Content-Length", str(10 * 1024 * 1024))  # announced, never sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["param"] == "body"
    connection.close()


def test_several_workers_need_a_server_store(tmp_path):
    result = subprocess.run([sys.executable, "-m", "crossmodal", "serve", "--workers", "2", "--store", str(tmp_path)],
                            cwd=ROOT, env={**os.environ, "CROSSMODAL_API_KEY": KEY}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "workers" in result.stderr and "Qdrant server" in result.stderr
