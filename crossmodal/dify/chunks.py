"""Document chunks as Dify's Knowledge Base node really indexes them (docs/dify-compat.md has the sources).

A chunk's pictures travel in its ``content``, as markdown images of the tool files' preview paths
(``![name](/files/tools/<id>.<ext>)``), and its ``files`` stay empty. Dify's code decides this, not its published
schema:

- A chunk with ``files`` makes Dify build its ``File`` model from each entry (an explicit constructor that refuses
  any other key, such as the schema's ``name``) and then look each file's ``id`` up as an **UploadFile** when it
  embeds and retrieves, skipping it silently when absent. ``session.file.upload`` makes a **ToolFile**, so not one
  picture listed there would be embedded.
- A chunk without ``files`` has its content searched for markdown images; a ``/files/tools/<id>.<ext>`` one is read
  from the ToolFile table, copied into a new UploadFile (through Dify's FileService: no ``/`` or ``\\`` in the
  name, and before Dify 1.13.1 none of ``:*?"<>|`` either; images up to 10 MB) and bound to the chunk as an
  attachment, which a Vision embedding model embeds and retrieval returns. This is the route Dify's own extractor
  takes, alike in every release from 1.11 to 1.15.

The path is written without host or signature: Dify's indexer needs only the path, and Dify signs such paths
afresh whenever it shows a chunk (a signature written now would expire after ``FILES_ACCESS_TIMEOUT``).
"""

from __future__ import annotations

import mimetypes
import re
from typing import Callable, Iterable
from urllib.parse import urlparse

from crossmodal.errors import CrossmodalError

# What Dify's indexer recognises as a tool file: the id of its ToolFile row (hex digits and dashes) and an
# extension of letters and digits, under /files/tools/.
TOOL_FILE_PATH = re.compile(r"/files/tools/([a-f0-9-]+)\.([A-Za-z0-9]+)")
# Characters a markdown image's alt text may not carry: Dify finds images with a non-greedy match of
# "![alt](url)" on one line, so a newline, "[" or "]" in the alt text would cut or hide the image.
ALT_TEXT_UNSAFE = re.compile(r"[\[\]()\r\n]")


def tool_file_path(uploaded) -> str:
    """The ``/files/tools/<id>.<ext>`` path of a picture uploaded with ``session.file.upload`` (the SDK's
    UploadFileResponse: ``id``, ``extension``, ``mime_type``, ``preview_url``), as Dify's indexer finds it."""
    preview = urlparse(uploaded.preview_url or "").path
    found = TOOL_FILE_PATH.fullmatch(preview)
    if found and found.group(1) == uploaded.id:
        return preview
    extension = (uploaded.extension or mimetypes.guess_extension(uploaded.mime_type or "") or "").lstrip(".")
    path = f"/files/tools/{uploaded.id}.{extension}"
    if not TOOL_FILE_PATH.fullmatch(path):
        raise CrossmodalError(f"Dify answered the picture's upload with id '{uploaded.id}' and extension "
                              f"'{uploaded.extension}', which its knowledge base indexer cannot find as a tool file",
                              param="file", status=502)
    return path


def markdown_image(name: str, path: str) -> str:
    alt = ALT_TEXT_UNSAFE.sub(" ", name).strip() or "image"
    return f"![{alt}]({path})"


def chunk_content(text: str, pictures: Iterable[tuple[str, str]]) -> str:
    """The chunk's text followed by one markdown image per (name, path) picture, each on its own line."""
    images = "\n".join(markdown_image(name, path) for name, path in pictures)
    return f"{text}\n\n{images}" if images else text


def general_chunks(chunks, upload: Callable) -> dict:
    """Chunks (crossmodal/ingest/documents.py) as the ``result`` of a Knowledge Pipeline processor: Dify's
    multimodal general structure, each picture uploaded with ``upload(picture)`` (-> UploadFileResponse) and
    carried in the content."""
    return {"general_chunks": [
        {"content": chunk_content(chunk.content, [(p.name, tool_file_path(upload(p))) for p in chunk.pictures]),
         "files": []}
        for chunk in chunks]}

