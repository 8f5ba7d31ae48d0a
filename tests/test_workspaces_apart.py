"""One plugin process serves every workspace of a Dify (issue 42, finding 6): what one workspace configures
never reaches another's models, files, network or figures. (/metrics per endpoint: tests/test_endpoints.py.)"""

from __future__ import annotations

import pytest

from crossmodal.errors import CrossmodalError


@pytest.fixture
def inside_dify(monkeypatch):
    """A plugin process as the daemon starts it, without the tests' permission to name paths."""
    monkeypatch.setenv("INSTALL_METHOD", "local")
    monkeypatch.delenv("CROSSMODAL_ALLOW_PATHS", raising=False)
    monkeypatch.delenv("CROSSMODAL_MODEL_ROOTS", raising=False)
    monkeypatch.delenv("CROSSMODAL_URL_ALLOWLIST", raising=False)


def test_a_hub_model_is_kept_per_endpoint_and_token():
    """The loaded-model key left out the hub endpoint, token and cache: a private model loaded with workspace A's
    token was served to B by name, and B's mirror decided the weights for everyone naming that id."""
    from crossmodal.encoders.catalog import HubOptions, hub_scope
    from crossmodal.encoders.models import _encoder_key

    plain, token_a, token_b = HubOptions(), HubOptions(token="hf_a" * 5), HubOptions(token="hf_b" * 5)
    mirror = HubOptions(endpoint="https://mirror.example")
    keys = {_encoder_key("acme/private-clip", "cpu", "fp32", hub) for hub in (plain, token_a, token_b, mirror)}
    assert len(keys) == 4
    # downloads too: each token and mirror fills a cache folder of its own; the plain hub shares the default
    caches = {hub.download_cache() for hub in (plain, token_a, token_b, mirror)}
    assert len(caches) == 4 and plain.download_cache() is None
    assert "hf_a" not in token_a.download_cache()  # the folder's name tells nothing of the token
    # a preset's bundled files and a local folder are the same whoever asks
    assert hub_scope("demo-shapes", token_a) == hub_scope("demo-shapes", token_b) == ""


def test_inside_dify_a_model_path_is_refused_without_probing_it(inside_dify, tmp_path):
    from crossmodal.encoders.catalog import model_identity

    existing = tmp_path / "a-model"
    existing.mkdir()
    errors = []
    for path in (str(existing), str(tmp_path / "missing"), "/etc", "../../secrets"):
        with pytest.raises(CrossmodalError) as refused:
            model_identity(path)
        errors.append(str(refused.value).replace(path, "PATH"))
    assert len(set(errors)) == 1 and "CROSSMODAL_MODEL_ROOTS" in errors[0]  # the same words, existing or not
    assert model_identity("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"  # a hub id
    assert model_identity("demo-shapes") == "demo-shapes"


def test_the_admins_model_roots_allow_folders_under_them(inside_dify, tmp_path, monkeypatch):
    from crossmodal.encoders.catalog import model_identity
    from crossmodal.settings import Settings

    root = tmp_path / "models"
    (root / "team-clip").mkdir(parents=True)
    monkeypatch.setenv("CROSSMODAL_MODEL_ROOTS", str(root))
    assert model_identity(str(root / "team-clip")) == str((root / "team-clip").resolve())
    with pytest.raises(CrossmodalError, match="model"):
        model_identity(str(root / ".." / "elsewhere"))  # no way out of the root
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(CrossmodalError, match="model"):
        model_identity(str(root / "link"))  # nor through a symbolic link
    with pytest.raises(CrossmodalError, match="hf_cache_dir"):
        Settings.from_credentials({"hf_cache_dir": "/root/.cache/huggingface"})
    assert Settings.from_credentials({"hf_cache_dir": str(root)}).hub.cache_dir == str(root.resolve())


def test_a_workspace_narrows_the_admins_url_policy_and_never_widens_it(inside_dify, monkeypatch):
    from crossmodal.inputs.urls import UrlPolicy, check_workspace_allowlist

    monkeypatch.setenv("FILES_URL", "http://api:5001")
    assert UrlPolicy.from_settings("169.254.169.254").allow_hosts == {"api"}  # Dify's file server only
    with pytest.raises(CrossmodalError, match="CROSSMODAL_URL_ALLOWLIST") as refused:
        check_workspace_allowlist("169.254.169.254")
    assert refused.value.param == "url_allowlist"
    monkeypatch.setenv("CROSSMODAL_URL_ALLOWLIST", "qdrant, mirror.internal")
    assert UrlPolicy.from_settings(None).allow_hosts == {"api", "qdrant", "mirror.internal"}
    assert UrlPolicy.from_settings("qdrant").allow_hosts == {"api", "qdrant"}  # narrowed
    check_workspace_allowlist("qdrant")
    monkeypatch.delenv("INSTALL_METHOD")  # outside Dify the operator's list is the admin's
    assert "10.0.0.9" in UrlPolicy.from_settings("10.0.0.9").allow_hosts


def test_service_urls_go_through_the_url_rules_inside_dify(inside_dify, monkeypatch):
    from crossmodal.inputs.urls import check_service_url

    for url in ("http://127.0.0.1:6333", "http://169.254.169.254/latest", "file:///etc/passwd"):
        with pytest.raises(CrossmodalError) as refused:
            check_service_url(url, "store_url")
        assert refused.value.param == "store_url"
    monkeypatch.setenv("CROSSMODAL_URL_ALLOWLIST", "localhost")
    assert check_service_url("http://localhost:6333", "store_url") == "http://localhost:6333"


def test_a_store_url_that_is_not_qdrant_never_has_its_answer_echoed():
    """A 400 from store_url was echoed (300 bytes) into the error: store_url could read an internal service."""
    from crossmodal.store.remote import qdrant_reason

    assert qdrant_reason(b'{"status": {"error": "Wrong input: Vector dimension error"}, "time": 0.1}') == \
        "Wrong input: Vector dimension error"
    secret = b"<html>internal admin console: token=abc123</html>"
    assert "abc123" not in qdrant_reason(secret) and "not a Qdrant error" in qdrant_reason(secret)


def test_a_store_url_inside_dify_follows_the_admins_url_rules(inside_dify):
    from crossmodal.store import open_store

    with pytest.raises(CrossmodalError) as refused:
        open_store("http://169.254.169.254:6333")
    assert refused.value.param == "store_url" and "CROSSMODAL_URL_ALLOWLIST" in str(refused.value)
