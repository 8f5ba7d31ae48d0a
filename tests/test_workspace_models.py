"""Tool nodes that embed with a Vision embedding model of the Dify workspace (``model: dify:<provider>/<model>``),
by the SDK's reverse invocation. The harness answers each invocation as the daemon and Dify do: the manifest's
permission first, then the workspace's model, here the built model package driven over stdio (what Dify itself
would call)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from stdio_harness import MAX_LINE_BYTES, PluginProcess, errors, json_message, variables

pytestmark = pytest.mark.protocol

WORKSPACE_MODEL = "dify:crossmodal_models/demo-shapes"
PROVIDERS = ("crossmodal_models", "langgenius/crossmodal-models/crossmodal_models")


@pytest.fixture(scope="module")
def workspace(models_plugin):
    """Dify's side of a multimodal_embedding invocation: the named provider's model, run by its plugin."""
    from stdio_harness import stream_messages

    def answer(request: dict) -> dict:
        assert request["type"] == "multimodal_embedding" and request["model_type"] == "text-embedding"
        if request["provider"] not in PROVIDERS:
            raise LookupError(f"Provider {request['provider']} does not exist.")
        messages = models_plugin.call({
            "user_id": "u1", "type": "model", "action": "invoke_multimodal_embedding",
            "provider": "crossmodal_models", "model": request["model"], "model_type": "text-embedding",
            "credentials": {"device": "cpu"}, "documents": request["documents"],
            "input_type": request["input_type"]})
        if errors(messages):
            raise RuntimeError(errors(messages)[0]["message"])
        (result,) = stream_messages(messages)
        return result

    return answer


@pytest.fixture(scope="module")
def tools(workspace):
    process = PluginProcess(heartbeat_interval=0.25, dify=workspace)
    process.wait_ready()
    yield process
    process.close()
    assert not process.non_json and not process.oversized


def scene_png(seed: int, size: int = 256) -> tuple[bytes, object]:
    from crossmodal.lab.scenes import generate_scene

    scene = generate_scene(seed, size, size, 1)
    buffer = io.BytesIO()
    scene.image.save(buffer, "PNG")
    return buffer.getvalue(), scene


def test_the_embed_node_gives_the_workspace_models_vectors(tools, file_server, tmp_path):
    pictures = [scene_png(980_000_000 + k)[0] for k in range(3)]
    files = [file_server(f"ws{k}.png", data) for k, data in enumerate(pictures)]
    params = {"images": files, "texts": "a red circle\n一个蓝色星形"}
    creds = {"data_dir": str(tmp_path / "store")}
    before = len(tools.invocations)
    remote = variables(tools.invoke_tool("embed", {**params, "model": WORKSPACE_MODEL}, creds))
    local = variables(tools.invoke_tool("embed", {**params, "model": "demo-shapes"}, creds))
    assert remote["model"] == WORKSPACE_MODEL and remote["dimension"] == local["dimension"]
    got = np.asarray([i["vector"] for i in remote["items"]])
    expected = np.asarray([i["vector"] for i in local["items"]])
    assert [i["kind"] for i in remote["items"]] == [i["kind"] for i in local["items"]]
    assert np.min(np.sum(got * expected, axis=1)) >= 0.9999
    calls = tools.invocations[before:]
    assert calls and all(kind == "multimodal_embedding" for kind, _ in calls)
    assert {(r["provider"], r["model"]) for _, r in calls} == {("crossmodal_models", "demo-shapes")}


def test_ingest_and_search_keep_the_collection_on_its_workspace_model(tools, file_server, tmp_path):
    creds = {"data_dir": str(tmp_path / "store"), "default_collection": "workspace"}
    scenes = [scene_png(981_000_000 + k) for k in range(6)]
    files = [file_server(f"wsi{k}.png", data) for k, (data, _) in enumerate(scenes)]
    report = json_message(tools.invoke_tool("ingest", {"files": files, "model": WORKSPACE_MODEL}, creds))
    assert report["added"] == 6 and report["model"] == WORKSPACE_MODEL
    info = json_message(tools.invoke_tool("collections", {"action": "info", "collection": "workspace"}, creds))
    assert info["model"] == WORKSPACE_MODEL

    hits = 0
    for k, (_, scene) in enumerate(scenes):
        text = f"a {scene.objects[0].color} {scene.objects[0].shape}"
        found = json_message(tools.invoke_tool("search", {"query": text, "top_k": 1}, creds))
        assert found["model"] == WORKSPACE_MODEL  # auto: the collection's own model
        hits += found["results"][0]["payload"]["source"] == f"wsi{k}.png"
    assert hits >= 4
    by_image = json_message(tools.invoke_tool("search", {"image": files[2], "top_k": 1}, creds))
    assert by_image["results"][0]["payload"]["source"] == "wsi2.png"

    (error,) = errors(tools.invoke_tool("search", {"query": "a red circle", "model": "demo-shapes"}, creds))
    assert WORKSPACE_MODEL in error["message"] and "demo-shapes" in error["message"]


def test_align_says_it_needs_a_local_model(tools, file_server, tmp_path):
    image = file_server("wsa.png", scene_png(982_000_000)[0])
    (error,) = errors(tools.invoke_tool("align", {"image": image, "text": "a red circle", "model": WORKSPACE_MODEL},
                                        {"data_dir": str(tmp_path / "store")}))
    assert "local" in error["message"] and WORKSPACE_MODEL in error["message"]


def test_large_photos_travel_in_batches_under_the_daemons_line_limit(tools, file_server, tmp_path):
    """Twelve 1600 x 1200 noise JPEGs (about 1.5 MB each): sent as they are, they would make one 20 MB stdout
    line, which the daemon answers by killing the plugin."""
    from PIL import Image

    rng = np.random.default_rng(7)
    files = []
    for k in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
        files.append(file_server(f"big{k}.jpg", buffer.getvalue()))
    before = len(tools.invocations)
    result = variables(tools.invoke_tool("embed", {"images": files, "model": WORKSPACE_MODEL},
                                         {"data_dir": str(tmp_path / "store")}))
    assert len(result["items"]) == 12 and not result["rejected"]
    calls = tools.invocations[before:]
    assert len(calls) > 1 and sum(len(r["documents"]) for _, r in calls) == 12
    assert tools.longest_line < MAX_LINE_BYTES


def test_workspace_failures_are_node_errors_that_name_the_model(tools, file_server, tmp_path):
    creds = {"data_dir": str(tmp_path / "store")}
    (error,) = errors(tools.invoke_tool("embed", {"texts": "a red circle", "model": "dify:nosuch/clip"}, creds))
    assert "dify:nosuch/clip" in error["message"] and "Provider nosuch does not exist" in error["message"]
    (error,) = errors(tools.invoke_tool("embed", {"texts": "a red circle", "model": "dify:demo-shapes"}, creds))
    assert "dify:<provider>/<model>" in error["message"]

    granted = tools.permissions
    tools.permissions = {}  # a manifest without the text-embedding permission
    try:
        (error,) = errors(tools.invoke_tool("embed", {"texts": "a red circle", "model": WORKSPACE_MODEL}, creds))
    finally:
        tools.permissions = granted
    assert "permission denied" in error["message"] and "text-embedding" in error["message"]


def test_the_manifest_asks_for_the_permission_the_daemon_checks():
    from stdio_harness import ROOT, _permissions

    assert _permissions(ROOT / "manifest.yaml")["text-embedding"] is True


# -- the encoder over a workspace, without Dify -------------------------------------------------------
class FakeWorkspace:
    """Vectors from a table of texts; records each call."""

    def __init__(self, dim: int = 4, drop: bool = False):
        self.dim, self.drop, self.calls = dim, drop, []

    def embed(self, provider, model, documents, input_type):
        self.calls.append((provider, model, len(documents), input_type))
        vectors = [[float(len(d["content"]) % 7 + 1), 2.0, 0.0, 1.0][: self.dim] for d in documents]
        return vectors[:-1] if self.drop else vectors


@pytest.mark.parametrize("name, expected", [
    ("dify:jina/jina-clip-v2", ("jina", "jina-clip-v2")),
    ("dify:langgenius/jina/jina/jina-clip-v2", ("langgenius/jina/jina", "jina-clip-v2")),
    ("dify:crossmodal_models/openai/clip-vit-base-patch32", ("crossmodal_models", "openai/clip-vit-base-patch32")),
    (" dify:a/b ", ("a", "b")),
])
def test_workspace_model_names(name, expected):
    from crossmodal.encoders.workspace import parse_workspace_model

    assert parse_workspace_model(name) == expected


@pytest.mark.parametrize("name", ["dify:", "dify:jina", "dify:/m", "dify:jina/"])
def test_bad_workspace_model_names(name):
    from crossmodal.encoders.workspace import parse_workspace_model
    from crossmodal.errors import CrossmodalError

    with pytest.raises(CrossmodalError, match="dify:<provider>/<model>"):
        parse_workspace_model(name)


def test_the_workspace_encoder_normalises_and_guards_the_order(tmp_path):
    from crossmodal.encoders.workspace import WorkspaceEncoder
    from crossmodal.errors import CrossmodalError

    fake = FakeWorkspace()
    encoder = WorkspaceEncoder("dify:fake/four", fake)
    vectors = encoder.encode_texts(["a", "bb", "ccc"]).vectors
    assert vectors.shape == (3, 4) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert encoder.dim == 4 and fake.calls[-1] == ("fake", "four", 3, "document")
    encoder.query_text_vector("a red circle")
    assert fake.calls[-1][3] == "query"
    with pytest.raises(CrossmodalError, match="returned 1 vectors for 2 documents"):
        WorkspaceEncoder("dify:fake/four", FakeWorkspace(drop=True)).encode_texts(["a", "b"])
    with pytest.raises(CrossmodalError, match="now returns 3-d vectors, not 4-d"):
        WorkspaceEncoder("dify:fake/four", FakeWorkspace(dim=3)).encode_texts(["a"])


def test_outside_a_tool_node_a_workspace_model_is_a_clear_error(tmp_path):
    from crossmodal.errors import CrossmodalError
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path)))
    with pytest.raises(CrossmodalError, match="only the tool nodes inside Dify"):
        service.embed(texts=["a red circle"], model="dify:jina/jina-clip-v2")


def test_batches_stay_under_the_byte_and_count_limits():
    from crossmodal.encoders.workspace import MAX_BATCH_BYTES, MAX_BATCH_DOCUMENTS, batches

    documents = [{"content": "x" * (MAX_BATCH_BYTES // 3), "content_type": "image"}] * 7
    documents += [{"content": "t", "content_type": "text"}] * 70
    runs = list(batches(documents))
    assert sum(len(r) for r in runs) == len(documents)
    assert all(len(r) <= MAX_BATCH_DOCUMENTS for r in runs)
    assert all(sum(len(d["content"]) for d in r) <= MAX_BATCH_BYTES for r in runs)


def test_large_pictures_are_sent_small_and_small_ones_lossless():
    from PIL import Image

    from crossmodal.encoders.workspace import MAX_IMAGE_SIDE, image_payload

    small = Image.new("RGB", (300, 200), (200, 10, 10))
    decoded = Image.open(io.BytesIO(base64.b64decode(image_payload(small))))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), np.asarray(small))
    large = Image.new("RGB", (4000, 3000), (10, 200, 10))
    decoded = Image.open(io.BytesIO(base64.b64decode(image_payload(large))))
    assert decoded.format == "JPEG" and max(decoded.size) == MAX_IMAGE_SIDE and decoded.size[0] / decoded.size[1] == 4 / 3
