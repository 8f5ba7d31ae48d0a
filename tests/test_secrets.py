"""API keys and tokens never appear in outputs, errors or logs, whatever fails."""

from stdio_harness import errors, validate_request

STORE_KEY = "qdrant-secret-key-5e3f1a"
HF_TOKEN = "hf_secretTokenValue9271"
ENDPOINT_SECRET = "mirror-password-77"


def test_secrets_stay_out_of_errors_outputs_and_logs(plugin, tmp_path, tiny_clip_dir):
    from crossmodal.settings import Settings

    failing = [
        {"store_url": "http://127.0.0.1:9", "store_api_key": STORE_KEY, "model": str(tiny_clip_dir)},
        {"data_dir": str(tmp_path), "model": "someone/private-model", "hf_token": HF_TOKEN, "hf_offline": "true"},
        {"data_dir": str(tmp_path), "model": "someone/private-model", "hf_token": HF_TOKEN,
         "hf_endpoint": f"http://user:{ENDPOINT_SECRET}@127.0.0.1:9"},
    ]
    seen = []
    for creds in failing:
        messages = plugin.call(validate_request(creds), timeout=120)
        assert errors(messages), creds
        seen.append(repr(messages))
        tool = plugin.invoke_tool("search", {"query": "a red circle"}, creds, timeout=120)
        seen.append(repr(tool))
        seen.append(repr(Settings.from_credentials(creds)))
    seen.append("".join(plugin.stderr_lines))
    text = "\n".join(seen)
    for secret in (STORE_KEY, HF_TOKEN, ENDPOINT_SECRET):
        assert secret not in text
