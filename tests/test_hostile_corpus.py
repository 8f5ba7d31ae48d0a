"""Every node, through the stdio protocol, against the generated hostile corpus: each file is either used
(with a note where something was dropped) or refused with a clear error naming it; nothing crashes, one bad
file never sinks a batch."""

import pytest

from hostile_corpus import corpus
from stdio_harness import errors, json_message

CORPUS = corpus()


def _expect_ok(expectation: str) -> bool | None:
    return True if expectation == "ok" else (None if expectation.startswith("ok-or:") else False)


def test_batch_nodes_sort_the_corpus_file_by_file(plugin, file_server, tiny_clip_dir, tmp_path):
    creds = {"data_dir": str(tmp_path / "store"), "model": str(tiny_clip_dir), "default_collection": "hostile"}
    files = [file_server(name, data) for name, (data, _) in CORPUS.items()]
    report = json_message(plugin.invoke_tool("ingest", {"files": files}, creds))
    rejected = {r["source"]: r["reason"] for r in report["rejected"]}
    for name, (_, expectation) in CORPUS.items():
        ok = _expect_ok(expectation)
        if ok is True:
            assert name not in rejected, rejected.get(name)
        elif ok is False:
            assert name in rejected and expectation.lower() in rejected[name].lower(), (name, rejected.get(name))
    assert report["added"] == len(CORPUS) - len(rejected)
    embedded = json_message(plugin.invoke_tool("embed", {"images": files}, creds))
    assert {r["source"] for r in embedded["rejected"]} == set(rejected)
    reranked = json_message(plugin.invoke_tool("rerank", {"query": "a red circle", "files": files,
                                                          "method": "region"}, creds))
    assert {r["source"] for r in reranked["rejected"]} == set(rejected)


@pytest.mark.parametrize("name", list(CORPUS))
def test_single_image_nodes(plugin, file_server, tiny_clip_dir, tmp_path, name):
    data, expectation = CORPUS[name]
    creds = {"data_dir": str(tmp_path / "store"), "model": str(tiny_clip_dir), "default_collection": "h"}
    plugin.invoke_tool("ingest", {"texts": "a red circle"}, creds)
    file = file_server(f"single-{name}", data)
    for tool, params in (("align", {"image": file, "text": "a red circle"}),
                         ("search", {"image": file, "target": "text"})):
        messages = plugin.invoke_tool(tool, params, creds)
        problems = errors(messages)
        if problems:
            message = problems[0]["message"]
            assert problems[0]["error_type"] != "RuntimeError" and "internal error" not in message, message
            assert _expect_ok(expectation) is not True or "at least 8 px" in message, (tool, message)
        else:
            assert _expect_ok(expectation) is not False, (tool, name)
