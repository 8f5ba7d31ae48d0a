"""The lean build (``package --runtime onnx``: ONNX Runtime alone) against the full one, node by node over stdio.

Congruence tests in qdrant-client's manner: the same calls go to the torch package and to the lean package,
each unpacked as the daemon does, and the answers must agree. The lean plugin runs with every module its
requirements do not pull in made unimportable (torch, transformers, sentence-transformers, scipy, ...), or,
with CROSSMODAL_LEAN_PYTHON set (CI), in a Python 3.12 virtualenv installed from requirements-onnx.txt alone,
where those are not installed at all.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import modules_outside
from stdio_harness import ROOT, PluginProcess, endpoint_request, errors, http_response, json_message, variables

pytestmark = [pytest.mark.protocol, pytest.mark.slow]

TORCH_ONLY = ("torch", "transformers", "sentence_transformers")
SCENES = ROOT / "crossmodal" / "assets" / "precision-check"


def start_lean(folder: Path) -> PluginProcess:
    process = PluginProcess(cwd=folder, heartbeat_interval=0.25, python=os.environ.get("CROSSMODAL_LEAN_PYTHON"),
                            missing=modules_outside(ROOT / "requirements-onnx.txt"))
    process.wait_ready()
    return process


def unpacked(tmp_path_factory, models: bool) -> Path:
    from crossmodal.dify.packaging import build_package

    package = build_package(ROOT, str(tmp_path_factory.mktemp("lean-pkg") / "lean.difypkg"), models=models,
                            runtime="onnx")
    folder = tmp_path_factory.mktemp("lean-cwd") / ("crossmodal-models-0.1.0@lean" if models else "crossmodal-0.1.0@lean")
    zipfile.ZipFile(package).extractall(folder)
    return folder


def running_lean(tmp_path_factory, models: bool):
    """The lean package's plugin for a module's tests; afterwards, stdout held only protocol lines under the
    daemon's limit and no import failed."""
    process = start_lean(unpacked(tmp_path_factory, models=models))
    yield process
    process.close()
    assert not process.non_json and not process.oversized
    assert not [line for line in process.stderr_lines if "No module named" in line], process.stderr_lines[-5:]


@pytest.fixture(scope="module")
def lean_plugin(tmp_path_factory):
    yield from running_lean(tmp_path_factory, models=False)


@pytest.fixture(scope="module")
def builds(plugin, lean_plugin) -> dict[str, PluginProcess]:
    return {"torch": plugin, "onnx": lean_plugin}


def on_both(builds, tmp_path, tool: str, params: dict, **credentials) -> dict[str, list[dict]]:
    """The same node call on each build, each with its own data directory."""
    out = {}
    for name, process in builds.items():
        creds = {"data_dir": str(tmp_path / name), "model": "demo-shapes", **credentials}
        out[name] = process.invoke_tool(tool, params, creds, timeout=180)
        assert not errors(out[name]), (name, errors(out[name]))
    return out


def scene_files(file_server, count: int = 8) -> tuple[list[dict], list[str]]:
    captions = json.loads((SCENES / "captions.json").read_text())[:count]
    files = [file_server(f"lean-scene-{k}.png", (SCENES / f"scene-{k}.png").read_bytes()) for k in range(count)]
    return files, captions


def test_the_lean_plugins_environment_cannot_import_torch():
    """In CI the lean plugin's interpreter is a virtualenv of requirements-onnx.txt: torch is not installed there.
    Here (one environment for everything) those modules are made unimportable for the lean plugin."""
    import subprocess

    lean_python = os.environ.get("CROSSMODAL_LEAN_PYTHON")
    if lean_python:
        probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in %r))" % (TORCH_ONLY,)
        assert subprocess.run([lean_python, "-c", probe]).returncode == 0, "torch is installed in the lean env"
        version = subprocess.run([lean_python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True).stdout.strip()
        assert version == "(3, 12)", version
    else:
        assert set(TORCH_ONLY) <= set(modules_outside(ROOT / "requirements-onnx.txt"))


def test_the_lean_package_ships_its_own_requirements_and_no_torch_code():
    from crossmodal.dify.packaging import package_entries

    for models in (False, True):
        shipped = dict((name, path) for path, name in package_entries(ROOT, models=models, runtime="onnx"))
        expected = ROOT / ("model_provider/requirements-onnx.txt" if models else "requirements-onnx.txt")
        assert shipped["requirements.txt"] == expected
        assert not any(name.startswith(("crossmodal/lab/", "crossmodal/assets/demo-shapes/")) for name in shipped)
        assert "crossmodal/encoders/onnx_export.py" not in shipped
        assert "crossmodal/assets/demo-shapes-onnx/onnx/vision_model.onnx" in shipped
        assert not any("qwen3-vl" in name for name in shipped)  # VLM models run on torch only
        listed = {line.split("#")[0].strip().split("=")[0].split("<")[0].split(">")[0].lower()
                  for line in expected.read_text().splitlines()}
        assert not listed & {"torch", "transformers", "sentence-transformers", "safetensors"}
        # onnx only where OCR rewrites its graphs at load (crossmodal/ocr/fusion.py): the tools, not the models
        assert ("onnx" in listed) == (not models)
    torch_build = {name for _, name in package_entries(ROOT, runtime="torch")}
    assert "crossmodal/assets/demo-shapes/model.safetensors" in torch_build
    assert "models/rerank/qwen3-vl-reranker-2b.yaml" in {name for _, name in package_entries(ROOT, models=True)}
    assert not any(name.startswith("crossmodal/assets/demo-shapes-onnx/") for name in torch_build)


def test_the_bundled_onnx_demo_is_the_demo_models_export():
    """The lean build's demo model is exported from the weights the full package ships (the manifest records
    their fingerprint): a collection made by one build is searched by the other."""
    from crossmodal.encoders.catalog import DEMO_MODEL_DIR, DEMO_ONNX_DIR, weights_fingerprint
    from crossmodal.encoders.onnx_encoder import read_manifest

    manifest = read_manifest(DEMO_ONNX_DIR)
    assert manifest["model"] == "demo-shapes" and manifest["weights"] == weights_fingerprint(DEMO_MODEL_DIR)


def test_embed_node_vectors_agree(builds, tmp_path, file_server):
    files, captions = scene_files(file_server, 3)
    answers = on_both(builds, tmp_path, "embed", {"texts": "\n".join(captions), "images": files})
    torch_result, lean_result = (json_message(answers[b]) for b in ("torch", "onnx"))
    assert lean_result["model"] == torch_result["model"] == "demo-shapes"
    assert lean_result["dimension"] == torch_result["dimension"]
    lean_items, full_items = variables(answers["onnx"])["items"], variables(answers["torch"])["items"]
    assert [i["kind"] for i in lean_items] == [i["kind"] for i in full_items] and len(lean_items) == 6
    ours = np.asarray([i["vector"] for i in lean_items], dtype=np.float32)
    theirs = np.asarray([i["vector"] for i in full_items], dtype=np.float32)
    assert float(np.min(np.sum(ours * theirs, axis=1))) >= 0.9999


def test_ingest_search_and_collections_agree(builds, tmp_path, file_server):
    files, captions = scene_files(file_server)
    ingested = on_both(builds, tmp_path, "ingest", {"files": files, "texts": "\n".join(captions)},
                       default_collection="scenes")
    reports = {b: json_message(m) for b, m in ingested.items()}
    assert reports["onnx"]["added"] == reports["torch"]["added"] == 16
    assert reports["onnx"]["precision"] == "onnx" and reports["torch"]["precision"] == "fp32"
    for query in captions[:4]:
        found = on_both(builds, tmp_path, "search", {"query": query, "target": "image", "top_k": 3},
                        default_collection="scenes")
        lean, full = (json_message(found[b])["results"] for b in ("onnx", "torch"))
        assert [r["id"] for r in lean] == [r["id"] for r in full], query
        assert np.allclose([r["score"] for r in lean], [r["score"] for r in full], atol=2e-3)
    by_image = on_both(builds, tmp_path, "search", {"image": files[2], "target": "text", "top_k": 3},
                       default_collection="scenes")
    assert [r["id"] for r in json_message(by_image["onnx"])["results"]] == \
        [r["id"] for r in json_message(by_image["torch"])["results"]]
    info = on_both(builds, tmp_path, "collections", {"action": "info", "collection": "scenes"})
    lean_info, full_info = json_message(info["onnx"]), json_message(info["torch"])
    for key in ("count", "model", "dimension"):
        assert lean_info[key] == full_info[key], (key, lean_info)


def test_align_agrees_in_global_and_tiled_mode(builds, tmp_path, file_server):
    from PIL import Image

    scene = Image.open(SCENES / "scene-3.png").convert("RGB")
    caption = json.loads((SCENES / "captions.json").read_text())[3]
    big = Image.new("RGB", (2048, 1536), (128, 128, 128))
    big.paste(scene.resize((896, 896)), (900, 400))
    for name, picture, mode in (("global", scene, "global"), ("tiled", big, "tiled")):
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        answers = on_both(builds, tmp_path, "align", {"image": file_server(f"lean-{name}.png", buf.getvalue()),
                                                      "text": caption, "mode": mode})
        lean, full = json_message(answers["onnx"]), json_message(answers["torch"])
        assert lean["mode"] == full["mode"] == mode
        for key in ("similarity_score", "match_probability", "match_score"):
            assert abs(lean[key] - full[key]) <= 2e-3, (name, key, lean[key], full[key])
        assert lean["calibration"] == full["calibration"]
        assert [p["box"] for p in lean["phrases"]] == [p["box"] for p in full["phrases"]], name
        lean_map = np.asarray(variables(answers["onnx"])["attention_map"]["values"])
        full_map = np.asarray(variables(answers["torch"])["attention_map"]["values"])
        assert np.abs(lean_map - full_map).max() <= 0.02, name


def test_region_rerank_of_search_hits_agrees(builds, tmp_path, file_server):
    files, captions = scene_files(file_server, 6)
    on_both(builds, tmp_path, "ingest", {"files": files}, default_collection="gallery")
    hits = on_both(builds, tmp_path, "search", {"query": captions[1], "target": "image", "top_k": 6},
                   default_collection="gallery")
    reranked = {}
    for name, process in builds.items():
        creds = {"data_dir": str(tmp_path / name), "model": "demo-shapes", "default_collection": "gallery"}
        messages = process.invoke_tool("rerank", {"query": captions[1], "method": "region", "collection": "gallery",
                                                  "candidates": json.dumps(json_message(hits[name]))}, creds)
        assert not errors(messages), errors(messages)
        reranked[name] = json_message(messages)["results"]
    assert [r["id"] for r in reranked["onnx"]] == [r["id"] for r in reranked["torch"]]
    assert np.allclose([r["score"] for r in reranked["onnx"]], [r["score"] for r in reranked["torch"]], atol=2e-3)


def test_endpoints_agree(builds, tmp_path):
    texts = ["a red circle", "a blue square", "a green triangle"]
    bodies = {}
    for name, process in builds.items():
        settings = {"api_key": "k" * 24, "data_dir": str(tmp_path / f"ep-{name}"), "model": "demo-shapes",
                    "default_collection": "kb"}
        auth = {"Authorization": "Bearer " + "k" * 24}
        for path, body in (("/v1/ingest", {"items": [{"text": t} for t in texts]}),
                           ("/v1/search", {"query": "a red circle", "top_k": 2}),
                           ("/retrieval", {"knowledge_id": "kb", "query": "a red circle",
                                           "retrieval_setting": {"top_k": 3, "score_threshold": 0.0}})):
            status, _, data = http_response(process.call(endpoint_request(settings, "POST", path, body, auth),
                                                         timeout=180))
            assert status == 200, (name, path, data[:300])
            bodies[(name, path)] = json.loads(data)
    lean, full = bodies[("onnx", "/v1/search")], bodies[("torch", "/v1/search")]
    assert [r["id"] for r in lean["results"]] == [r["id"] for r in full["results"]]
    lean, full = bodies[("onnx", "/retrieval")]["records"], bodies[("torch", "/retrieval")]["records"]
    assert [r["content"] for r in lean] == [r["content"] for r in full] and len(full) == 3
    assert np.allclose([r["score"] for r in lean], [r["score"] for r in full], atol=2e-3)


def test_cross_encoder_rerank_agrees_with_the_library(builds, tmp_path):
    """The torch build scores with sentence-transformers' CrossEncoder over the saved model; the lean build with
    ONNX Runtime over its export."""
    from crossmodal.encoders.onnx_export import export_model
    from tiny_models import save_tiny_cross_encoder

    model = save_tiny_cross_encoder(tmp_path / "ce")
    export_model(str(model), tmp_path / "ce-onnx")
    texts = "a red circle\na blue star\na green square\na yellow heart"
    results = {}
    for name, process in builds.items():
        creds = {"data_dir": str(tmp_path / name), "model": "demo-shapes",
                 "routes": json.dumps({"cross_encoder": str(tmp_path / ("ce" if name == "torch" else "ce-onnx"))})}
        messages = process.invoke_tool("rerank", {"query": "a red circle", "candidates": texts}, creds)
        assert not errors(messages), errors(messages)
        results[name] = json_message(messages)
    assert results["onnx"]["method"] == results["torch"]["method"] == "cross-encoder"
    lean, full = results["onnx"]["results"], results["torch"]["results"]
    assert [r["id"] for r in lean] == [r["id"] for r in full]
    assert np.allclose([r["score"] for r in lean], [r["score"] for r in full], atol=1e-5)


def test_what_needs_torch_is_a_clear_error_on_the_lean_build(lean_plugin, tmp_path, tiny_clip_dir, file_server):
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "c",
             "routes": json.dumps({"itm": "Salesforce/blip-itm-base-coco"})}
    (error,) = errors(lean_plugin.invoke_tool("embed", {"texts": "a cat"}, {**creds, "model": str(tiny_clip_dir)}))
    assert "ONNX export" in error["message"] and "python -m crossmodal export" in error["message"]
    files, captions = scene_files(file_server, 2)
    assert not errors(lean_plugin.invoke_tool("ingest", {"files": files}, creds))
    hits = json_message(lean_plugin.invoke_tool("search", {"query": captions[0], "target": "image"}, creds))
    (error,) = errors(lean_plugin.invoke_tool("rerank", {"query": captions[0], "candidates": json.dumps(hits),
                                                         "collection": "c", "method": "itm"}, creds))
    assert "full package" in error["message"] and "torch" in error["message"]
    noted = json_message(lean_plugin.invoke_tool("embed", {"texts": "a cat"}, {**creds, "precision": "bf16"}))
    assert any("bf16" in w for w in noted["warnings"])


@pytest.fixture(scope="module")
def lean_models_plugin(tmp_path_factory):
    yield from running_lean(tmp_path_factory, models=True)


def test_the_lean_model_package_embeds_and_reranks_as_the_full_one(models_plugin, lean_models_plugin):
    from test_model_package import model_request, only_result, png_b64, rerank_request

    image, _ = png_b64(5)
    documents = [{"content": "a red circle", "content_type": "text"}, {"content": image, "content_type": "image"}]
    vectors = {}
    for name, process in (("torch", models_plugin), ("onnx", lean_models_plugin)):
        result = only_result(process.call(model_request("invoke_multimodal_embedding", documents=documents)))
        vectors[name] = np.asarray(result["embeddings"], dtype=np.float32)
    assert float(np.min(np.sum(vectors["torch"] * vectors["onnx"], axis=1))) >= 0.9999
    docs = ["a red circle", "a blue square", "a green star"]
    ranked = {name: only_result(process.call(rerank_request("invoke_rerank", "a red circle", docs)))["docs"]
              for name, process in (("torch", models_plugin), ("onnx", lean_models_plugin))}
    assert [d["index"] for d in ranked["onnx"]] == [d["index"] for d in ranked["torch"]]
    assert np.allclose([d["score"] for d in ranked["onnx"]], [d["score"] for d in ranked["torch"]], atol=2e-3)


def test_the_lean_command_line_embeds_and_names_the_full_package_for_the_laboratory(tmp_path_factory, tmp_path):
    """`python -m crossmodal` inside the lean package: the pipeline stages run; calibrate, train and export say
    they need the full package."""
    import subprocess
    import sys

    folder = unpacked(tmp_path_factory, models=False)
    blocked = modules_outside(ROOT / "requirements-onnx.txt")
    runner = ("import runpy, sys\n"
              "class Missing:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              f"        if name.split('.')[0] in {blocked!r}:\n"
              "            raise ModuleNotFoundError(name)\n"
              "sys.meta_path.insert(0, Missing())\n"
              "sys.path.insert(0, '')\n"
              "sys.argv[0] = 'crossmodal'\n"
              "runpy.run_module('crossmodal', run_name='__main__', alter_sys=True)\n")
    python = os.environ.get("CROSSMODAL_LEAN_PYTHON") or sys.executable

    def run(*args):
        return subprocess.run([python, "-c", runner, *args], cwd=folder, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CROSSMODAL_HOME": str(tmp_path / "home")})

    embedded = run("embed", "--text", "a red circle", "--model", "demo-shapes", "--json")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert json.loads(embedded.stdout)["dimension"] > 0
    for command in (["calibrate"], ["export", "demo-shapes", "--out", str(tmp_path / "x")], ["train", "--help"]):
        refused = run(*command)
        if command == ["train", "--help"]:
            assert refused.returncode == 0
            continue
        assert refused.returncode == 2 and "full package" in refused.stderr, (command, refused.stderr[-1000:])
