"""A small Python client for the plugin's HTTP endpoints (the seed's ``MultimodalProcessor`` call shape).

    from crossmodal.client import MultimodalProcessor
    processor = MultimodalProcessor(api_key="...", base_url="https://dify.example.com/e/<hook_id>")
    response = processor.align_image_text(image_url="https://example.com/cat.jpg", text_query="一只猫躺在沙发上")
    response["similarity_score"], response["attention_map"]
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

TRANSPORT: httpx.BaseTransport | None = None  # tests route requests through the stdio harness


class CrossmodalAPIError(RuntimeError):
    def __init__(self, status: int, body):
        self.status, self.body = status, body
        message = body.get("error", {}).get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class MultimodalProcessor:
    def __init__(self, api_key: str, base_url: str, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout,
                                    transport=TRANSPORT)

    def align_image_text(self, image_url: str | None = None, text_query: str = "", *,
                         image: bytes | str | Path | None = None, **options) -> dict:
        """Similarity, match probability, per-phrase boxes and attention map (see the Align node)."""
        body = {"text_query": text_query, **options}
        if image is not None:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            body["image"] = base64.b64encode(data).decode()
        elif image_url:
            body["image_url"] = image_url
        return self._post("/v1/align", body)

    def search(self, query: str | None = None, **options) -> dict:
        return self._post("/v1/search", {"query": query, **options})

    def embed(self, texts: list[str] = (), images: list[bytes] = (), **options) -> dict:
        encoded = [base64.b64encode(i).decode() for i in images]
        return self._post("/v1/embed", {"texts": list(texts), "images": encoded, **options})

    def _post(self, path: str, body: dict) -> dict:
        response = self._client.post(self.base_url + path, json=body)
        data = response.json()
        if response.status_code != 200:
            raise CrossmodalAPIError(response.status_code, data)
        return data
