"""The model-provider package against the Embed node, both driven over stdio as Dify's daemon drives them:
64 images embedded with a ViT-B/32-size CLIP (random weights: the speed is the real model's) through
`invoke_multimodal_embedding` (base64 documents, one call) and through the Embed node (Dify files, one call).
Target: the model package within 10 % of the node.

    python benchmarks/bench_model_package.py [--images 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.common import save, table  # noqa: E402


def photos(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def file_server(folder: Path):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> dict:
    from crossmodal.dify.packaging import build_package
    from stdio_harness import PluginProcess, dify_file, errors, tool_request

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    model = str(save_vit_b32(work / "vit-b32"))
    data = photos(args.images)
    (work / "files").mkdir()
    for k, blob in enumerate(data):
        (work / "files" / f"p{k}.jpg").write_bytes(blob)
    server = file_server(work / "files")
    files = [dify_file(f"http://127.0.0.1:{server.server_port}/p{k}.jpg", f"p{k}.jpg", len(b), "image/jpeg")
             for k, b in enumerate(data)]
    documents = [{"content": base64.b64encode(b).decode(), "content_type": "image"} for b in data]
    package = build_package(ROOT, str(work / "models.difypkg"), models=True)
    folder = work / "cwd" / "crossmodal-models-0.1.0@bench"
    zipfile.ZipFile(package).extractall(folder)
    tools, models = PluginProcess(heartbeat_interval=5), PluginProcess(cwd=folder, heartbeat_interval=5)
    tools.wait_ready()
    models.wait_ready()
    credentials = {"device": "cpu", "precision": "fp32"}
    node = lambda: tools.call(tool_request("embed", {"images": files, "model": model},  # noqa: E731
                                           {**credentials, "data_dir": str(work / "store")}), timeout=600)
    provider = lambda: models.call({"user_id": "u", "type": "model", "action": "invoke_multimodal_embedding",  # noqa
                                    "provider": "crossmodal_models", "model": model, "model_type": "text-embedding",
                                    "credentials": credentials, "documents": documents}, timeout=600)
    rows = []
    try:
        for name, call in (("Embed node (Dify files)", node), ("model package (base64 documents)", provider)):
            problems = errors(call())  # first call: model load and warm-up, not timed
            assert not problems, problems
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                assert not errors(call())
                best = min(best, time.perf_counter() - started)
            rows.append({"path": name, "images": args.images, "seconds": round(best, 2),
                         "images_per_s": round(args.images / best, 1)})
    finally:
        tools.close()
        models.close()
        server.shutdown()
    rows[1]["vs_node"] = round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 3)
    print(table(rows, ["path", "images", "seconds", "images_per_s", "vs_node"]))
    result = {"rows": rows, "target": "model package >= 0.90 x the Embed node"}
    save("model_package", result)
    return result


if __name__ == "__main__":
    main()
