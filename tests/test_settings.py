import pytest

from crossmodal.settings import DEFAULT_COLLECTION, Settings, default_data_dir


def test_credentials_map_onto_settings(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    s = Settings.from_credentials({"store_url": " http://qdrant:6333 ", "store_api_key": "sk-secret-123", "model": "siglip",
                                   "device": "cpu", "hf_endpoint": "https://hf-mirror.com", "hf_token": "hf_secret_456",
                                   "hf_offline": True, "hf_cache_dir": "/models", "default_collection": ""})
    assert (s.store_url, s.store_api_key, s.model, s.device) == ("http://qdrant:6333", "sk-secret-123", "siglip", "cpu")
    assert (s.hub.endpoint, s.hub.token, s.hub.offline, s.hub.cache_dir) == ("https://hf-mirror.com", "hf_secret_456", True,
                                                                          "/models")
    assert s.collection == DEFAULT_COLLECTION
    assert "sk-secret" not in repr(s) and "hf_secret" not in repr(s)  # secrets never show in logs


def test_empty_credentials_mean_embedded_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSMODAL_HOME", str(tmp_path))
    s = Settings.from_credentials({})
    assert s.store_url is None and s.model == "auto" and s.device == "auto"
    assert default_data_dir() == tmp_path


def test_saving_credentials_fetches_no_weights(monkeypatch, tmp_path, tiny_clip_dir):
    """A hub model is checked from its config and processor files; its weights wait for first use."""
    import shutil

    import huggingface_hub

    from crossmodal.settings import Settings
    from crossmodal.dify.validation import validate_settings

    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.append((repo_id, list(allow_patterns or [])))
        folder = tmp_path / "snapshot"
        if not folder.exists():
            shutil.copytree(tiny_clip_dir, folder, ignore=lambda d, names: [n for n in names
                                                                           if n.endswith(".safetensors")])
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    report = validate_settings(Settings(data_dir=str(tmp_path / "store"), model="someone/tiny-clip"))
    assert report["model"] == "someone/tiny-clip"
    ((repo, patterns),) = asked
    assert repo == "someone/tiny-clip" and "config.json" not in patterns and "*.json" in patterns
    assert not any("safetensors" in p or "bin" in p for p in patterns)


def test_a_node_output_over_one_message_is_a_clear_error():
    """One variable message is one stdout line: past the daemon's 5 MiB the plugin would be killed."""
    from crossmodal.dify.adapter import MAX_MESSAGE_BYTES, ToolInputError, for_llm, variable_message

    class Tool:
        def create_variable_message(self, name, value):
            return (name, value)

    items = [{"kind": "text", "vector": [0.123456789] * 768} for _ in range(20)]
    assert variable_message(Tool(), "items", items) == ("items", items)
    too_many = items * (MAX_MESSAGE_BYTES // len(str(items)) + 2)
    with pytest.raises(ToolInputError, match="items: .* MiB.*fewer items"):
        variable_message(Tool(), "items", too_many)
    compact = for_llm({"items": items, "attention_map": {"rows": 2, "cols": 2, "values": [[0, 1], [1, 0]]}})
    assert compact == {"items": [{"kind": "text"}] * 20, "attention_map": {"rows": 2, "cols": 2}}
