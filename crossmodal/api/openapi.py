"""The OpenAPI 3.1 description of the HTTP API (served at GET /openapi.json, checked and fuzzed in tests)."""

from __future__ import annotations

from crossmodal import __version__

_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_B64 = {"type": "string", "contentEncoding": "base64", "description": "image file bytes, base64"}


def _body(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = required
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or _OBJ}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "413": {"$ref": "#/components/responses/TooLarge"},
    "422": {"$ref": "#/components/responses/Unprocessable"},
}


def _post(summary: str, body: dict, result: dict | None = None) -> dict:
    return {"post": {"summary": summary, "requestBody": body, "responses": {"200": _ok("result", result), **ERRORS}}}


def openapi_document() -> dict:
    hit = {"type": "object", "properties": {"id": _STR, "score": _NUM, "payload": _OBJ}, "required": ["id", "score"]}
    align_result = {"type": "object", "required": ["similarity_score", "phrases", "model", "mode"], "properties": {
        "similarity_score": _NUM, "match_probability": {"type": ["number", "null"]},
        "phrases": {"type": "array", "items": {"type": "object", "properties": {
            "text": _STR, "similarity_score": _NUM, "box": {"type": ["array", "null"], "items": _INT},
            "text_evidence": {"type": "object", "properties": {"line": _STR, "box": {"type": "array", "items": _INT},
                                                               "confidence": _NUM, "match": _NUM}}}}},
        "ocr_text": {"type": ["string", "null"]},
        "attention_map": {"type": "object", "properties": {"rows": _INT, "cols": _INT, "width": _INT,
                                                           "height": _INT, "values": {"type": "array"}}},
        "model": _STR, "mode": {"enum": ["global", "tiled"]}, "overlay_png": _B64}}
    error = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": _STR, "message": _STR, "param": {"type": ["string", "null"]}}, "required": ["code", "message"]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Crossmodal", "version": __version__,
                 "description": "Image-text alignment, embedding, search and reranking over one service layer."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/embed": _post("Embed images and texts into one L2-normalised space", _body(
                {"texts": {"type": "array", "items": _STR}, "images": {"type": "array", "items": _B64},
                 "model": _STR})),
            "/v1/ingest": _post("Add images and texts to a collection", _body(
                {"collection": _STR, "model": _STR, "regions": _BOOL,
                 "storage": {"type": "string", "description": "for a new collection, e.g. 'quantization=int8, "
                                                              "on_disk=true' (docs/scale.md)"},
                 "dpi": {"type": "number", "minimum": 36, "maximum": 600}, "max_pages": {"type": "integer", "minimum": 1},
                 "figures": _BOOL, "ocr": {"description": "read text in pictures: auto (scanned PDF pages and their "
                                           "figures, pictures in which text is detected), true, false",
                                           "oneOf": [{"type": "string", "enum": ["auto", "true", "false"]},
                                                     {"type": "boolean"}]},
                 "items": {"type": "array", "items": {"type": "object", "properties": {
                     "image": _B64, "image_url": _STR, "text": _STR, "caption": _STR,
                     "tags": {"type": "array", "items": _STR}, "metadata": _OBJ, "source": _STR}}}},
                ["items"])),
            "/v1/search": _post("Search a collection by text, image or both", _body(
                {"query": _STR, "image": _B64, "image_url": _STR, "collection": _STR,
                 "top_k": {"type": "integer", "minimum": 1, "maximum": 100}, "score_threshold": _NUM,
                 "filter": {"type": ["object", "string"]}, "target": {"enum": ["image", "text", "any"]},
                 "text_weight": {"type": "number", "minimum": 0, "maximum": 1}, "regions": _BOOL,
                 "rerank": {"enum": ["auto", "cross-encoder", "itm", "region"]}, "rerank_k": _INT,
                 "with_thumbnails": _BOOL, "model": _STR,
                 "mode": {"enum": ["auto", "dense", "lexical", "hybrid"],
                          "description": "dense: by the query vector (cosine); lexical: BM25 over the items' text "
                                         "(captions, page text, OCR text, metadata); hybrid: both lists fused in the "
                                         "engine. Empty or auto: hybrid when the collection has text, else dense"},
                 "fusion": {"enum": ["rrf", "dbsf"], "description": "how hybrid fuses the lists (default rrf); "
                                                                    "lexical and hybrid scores are 0-1"}}),
                {"type": "object", "properties": {"results": {"type": "array", "items": hit},
                                                  "mode": {"enum": ["dense", "lexical", "hybrid"]},
                                                  "fusion": {"enum": ["rrf", "dbsf"]}}}),
            "/v1/align": _post("Similarity, match probability, per-phrase boxes and heat map", _body(
                {"image": _B64, "image_url": _STR, "text": _STR, "text_query": _STR,
                 "mode": {"enum": ["auto", "global", "tiled"]}, "heatmap": _BOOL, "tile_size": _INT,
                 "overlap": _NUM, "overlay": _BOOL, "model": _STR,
                 "ocr": {"oneOf": [{"enum": ["auto", "true", "false"]}, {"type": "boolean"}]}}), align_result),
            "/v1/rerank": _post("Rescore first-stage candidates", _body(
                {"query": _STR, "candidates": {"type": ["object", "array", "string"]},
                 "images": {"type": "array", "items": _B64}, "query_image": _B64, "top_n": _INT,
                 "method": {"enum": ["auto", "cross-encoder", "itm", "region"]}, "weight": _NUM, "model": _STR,
                 "collection": _STR})),
            "/v1/collections": {"get": {"summary": "List collections",
                                        "responses": {"200": _ok("collections"), "401": ERRORS["401"]}}},
            "/retrieval": _post("Dify External Knowledge API", _body(
                {"knowledge_id": _STR, "query": _STR, "metadata_condition": _OBJ,
                 "retrieval_setting": {"type": "object", "properties": {"top_k": _INT, "score_threshold": _NUM}}},
                ["knowledge_id", "query"]),
                {"type": "object", "properties": {"records": {"type": "array", "items": {"type": "object",
                 "properties": {"content": _STR, "score": _NUM, "title": _STR, "metadata": _OBJ},
                 "required": ["content", "score", "title", "metadata"]}}}}),
            "/v1/image": {"get": {
                "summary": "An item's picture (its stored thumbnail) by a signed, expiring link from an External "
                           "Knowledge record; no bearer key",
                "security": [],
                "parameters": [{"name": name, "in": "query", "required": True, "schema": _STR,
                                "description": description}
                               for name, description in (("c", "collection"), ("id", "point id"),
                                                         ("e", "expiry, epoch seconds"), ("s", "signature"))],
                "responses": {"200": {"description": "the thumbnail", "content": {"image/jpeg": {}}},
                              "403": {"description": "no valid signature, or past its expiry"},
                              "404": ERRORS["404"]}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok("OpenAPI 3.1")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                name: {"description": description, "content": {"application/json": {"schema": error}}}
                for name, description in (("BadRequest", "malformed input, naming the field"),
                                          ("Unauthorized", "missing or wrong API key"),
                                          ("NotFound", "unknown collection"), ("TooLarge", "body over 10 MB"),
                                          ("Unprocessable", "an image that is not an image"))
            },
        },
    }
