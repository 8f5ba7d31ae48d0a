"""Dify's side of the pack's Dify-facing outputs, reproduced for the tests from Dify's own code: what Dify does with
an uploaded picture and with a Knowledge Pipeline chunk. Each step names the source it follows (repository,
release, commit, file and lines); the behaviour is written here in our own words and Dify's code stays in Dify.
docs/dify-compat.md lists the releases read and what each test follows.

Sources (langgenius/dify, read from a fork carrying upstream's tags; graphon is langgenius/graphon):
- 1.11.0 063b39a, 1.12.1 cd03e0a, 1.13.0 c730fec, 1.13.3 59639ca, 1.14.0 6fafeec (graphon 0.2.2 2c75d1f),
  1.14.2 7f392b6 (graphon 0.4.0 a1c8f4b), 1.15.0 3aa26fb (graphon 0.5.3 b25461c).
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import re
import threading
import uuid
from dataclasses import dataclass, field

# -- releases ------------------------------------------------------------------------------------------------------
# The File model a chunk's ``files`` entry is built into. Its constructor takes fixed keywords and raises TypeError
# on any other key. Up to 1.13.x: api/core/file/models.py (1.12.1 lines 61-81; 1.13.3 moved it to
# api/dify_graph/file/models.py lines 90-110) with tenant_id, type and transfer_method required. 1.14.0: graphon
# 0.2.2 src/graphon/file/models.py 111-132 (file_type and transfer_method required; no "id" or "type"). 1.14.1 on:
# graphon >= 0.3.1 (0.5.3 lines 115-143), which also takes "id" and "type" and refuses every other extra key.
_CORE_FILE_KEYWORDS = {"id", "tenant_id", "type", "transfer_method", "remote_url", "related_id", "filename",
                       "extension", "mime_type", "size", "storage_key", "dify_model_identity", "url", "tool_file_id",
                       "upload_file_id", "datasource_file_id"}
_GRAPHON_FILE_KEYWORDS = {"file_id", "tenant_id", "file_type", "transfer_method", "remote_url", "reference",
                          "related_id", "filename", "extension", "mime_type", "size", "storage_key",
                          "dify_model_identity", "url", "tool_file_id", "upload_file_id", "datasource_file_id"}
# FileService.upload_file refuses names with these characters (api/services/file_service.py: 1.12.1 line 62;
# from 1.13.1 on only the slashes, 1.15.0 line 64).
_OLD_FORBIDDEN = '/\\:*?"<>|'
_NEW_FORBIDDEN = "/\\"


@dataclass(frozen=True)
class Release:
    tag: str
    commit: str
    file_keywords: frozenset
    file_required: tuple  # each entry: keys of which one must be given
    forbidden_in_names: str


RELEASES = [
    Release("1.11.0", "063b39ada56e0ad1a89559d3466fa82fd372cc6c", frozenset(_CORE_FILE_KEYWORDS),
            (("tenant_id",), ("type",), ("transfer_method",)), _OLD_FORBIDDEN),
    Release("1.12.1", "cd03e0a9ef7f2383853ace444e3aefe4fac05cde", frozenset(_CORE_FILE_KEYWORDS),
            (("tenant_id",), ("type",), ("transfer_method",)), _OLD_FORBIDDEN),
    Release("1.13.0", "c730fec1e422e907fed668291b2ea18c4c243644", frozenset(_CORE_FILE_KEYWORDS),
            (("tenant_id",), ("type",), ("transfer_method",)), _OLD_FORBIDDEN),
    Release("1.13.3", "59639ca9b2ba2ba4b32b5feff5149cfc1ad0ba74", frozenset(_CORE_FILE_KEYWORDS),
            (("tenant_id",), ("type",), ("transfer_method",)), _NEW_FORBIDDEN),
    Release("1.14.0", "6fafeec41502152ec3552d1851aaeb3c22db1f02", frozenset(_GRAPHON_FILE_KEYWORDS),
            (("file_type",), ("transfer_method",)), _NEW_FORBIDDEN),
    Release("1.14.2", "7f392b6950c2e6fd1b5b7f746badb3b4581d705d", frozenset(_GRAPHON_FILE_KEYWORDS | {"id", "type"}),
            (("file_type", "type"), ("transfer_method",)), _NEW_FORBIDDEN),
    Release("1.15.0", "3aa26fb6374bbd47e5469f7d7cc25f3e0075a60c", frozenset(_GRAPHON_FILE_KEYWORDS | {"id", "type"}),
            (("file_type", "type"), ("transfer_method",)), _NEW_FORBIDDEN),
]

# Defaults of api/configs/feature/__init__.py (1.12.1 lines 333-386): images up to 10 MB through FileService
# (UPLOAD_IMAGE_FILE_SIZE_LIMIT), other files 15 MB; the extension blacklist is empty by default.
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "svg"}  # api/constants/__init__.py line 10
UPLOAD_IMAGE_LIMIT = 10 * 1024 * 1024
UPLOAD_FILE_LIMIT = 15 * 1024 * 1024


@dataclass
class StoredFile:
    id: str
    name: str
    mime_type: str
    data: bytes
    extension: str = ""


class DifyFiles:
    """Dify's side of ``session.file.upload``. The daemon's ``upload_file`` invocation (dify-plugin-daemon
    internal/core/dify_invocation/types.go 279-287) asks Dify's inner API for a signed
    ``{FILES_URL}/files/upload/for-plugin?...`` URL (api/core/file/helpers.py, 1.12.1 lines 29-39); the plugin POSTs
    the file there and Dify stores a **ToolFile** (api/controllers/files/upload.py 1.12.1 lines 102-131 ->
    ToolFileManager.create_file_by_raw, api/core/tools/tool_file_manager.py 70-108: the name as given when it has an
    extension) and answers 201 with ``id``, ``name``, ``size``, ``extension`` (guessed from the mime type),
    ``mime_type`` and ``preview_url`` = ``{INTERNAL_FILES_URL}/files/tools/<id><ext>?timestamp=&nonce=&sign=``
    (``sign_file``, lines 36-51). UploadFiles are a separate table, written only by FileService."""

    def __init__(self, files_url: str = "http://api:5001"):
        self.files_url = files_url
        self.tool_files: dict[str, StoredFile] = {}
        self.upload_files: dict[str, StoredFile] = {}
        owner = self

        class Upload(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                head, data = body.split(b"\r\n\r\n", 1)
                data = data.rsplit(b"\r\n--", 1)[0]
                name = re.search(rb'filename="([^"]+)"', head).group(1).decode()
                mime = re.search(rb"Content-Type: ([^\r\n]+)", head).group(1).decode()
                answer = json.dumps(owner.store_tool_file(name, mime, data)).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upload)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request: dict) -> dict:
        """The backwards invocation's answer: the signed upload URL (here on the loopback stand-in)."""
        assert request["type"] == "upload_file" and request["filename"] and request["mimetype"], request
        return {"url": f"http://127.0.0.1:{self.server.server_port}/files/upload/for-plugin?timestamp=1&nonce=n"
                       "&sign=s&user_id=u1&tenant_id=t1"}

    def store_tool_file(self, filename: str, mime_type: str, data: bytes) -> dict:
        extension = mimetypes.guess_extension(mime_type) or ".bin"
        name = filename if len(filename.split(".")) > 1 else filename + extension
        tool_file = StoredFile(str(uuid.uuid4()), name, mime_type, data, extension)
        self.tool_files[tool_file.id] = tool_file
        return {"id": tool_file.id, "name": name, "size": len(data), "extension": extension, "mime_type": mime_type,
                "preview_url": f"{self.files_url}/files/tools/{tool_file.id}{extension}?timestamp=1700000000"
                               f"&nonce=0f0f&sign=c2lnbg==",
                "source_url": None, "original_url": None, "user_id": "u1", "tenant_id": "t1",
                "conversation_id": None, "file_key": f"tools/t1/{uuid.uuid4().hex}{extension}"}

    def upload_file_service(self, filename: str, data: bytes, mime_type: str, release: Release) -> StoredFile:
        """FileService.upload_file (api/services/file_service.py, 1.12.1 lines 49-110, 1.15.0 49-118): the
        extension from the name, forbidden characters refused (ValueError), a name over 200 characters cut,
        images up to 10 MB and other files 15 MB (FileTooLargeError), then a new UploadFile row."""
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename.lstrip(".") else ""
        if any(c in filename for c in release.forbidden_in_names):
            raise ValueError("Filename contains invalid characters")
        if len(filename) > 200:
            filename = filename.split(".")[0][:200] + "." + extension
        limit = UPLOAD_IMAGE_LIMIT if extension in IMAGE_EXTENSIONS else UPLOAD_FILE_LIMIT
        if len(data) > limit:
            raise ValueError("FileTooLargeError")
        stored = StoredFile(str(uuid.uuid4()), filename, mime_type, data, extension)
        self.upload_files[stored.id] = stored
        return stored

    def close(self):
        self.server.shutdown()


# -- the Knowledge Base node's indexer -----------------------------------------------------------------------------
# api/core/rag/index_processor/index_processor_base.py (1.12.1 lines 143-222, 300-316; the same steps at 1.11.0
# 121-200, 1.13.3 152-231, 1.14.2 153-232 and 1.15.0 139-312): markdown images are found with a non-greedy
# "![alt](url)" match on one line; the url is then tried, in this order, as an upload file's image-preview or
# file-preview link, as a tool file (/files/tools/<hex and dashes>.<letters and digits>, any query allowed), else as
# a remote image to download (2 MB, ATTACHMENT_IMAGE_FILE_SIZE_LIMIT). Tool files and downloads are only taken when
# the indexer has a user, which it has for a multimodal chunk without files.
MARKDOWN_IMAGE = re.compile(r"!\[[^\n]*?\]\(([^\n]*?)\)")
UPLOAD_PREVIEW = re.compile(r"/files/([a-f0-9-]+)/(?:image|file)-preview")
TOOL_FILE = re.compile(r"/files/tools/([a-f0-9-]+)\.([a-zA-Z0-9]+)")


@dataclass
class Segment:
    content: str
    attachments: list = field(default_factory=list)  # UploadFile ids bound to it (SegmentAttachmentBinding)


@dataclass
class IndexOutcome:
    segments: list
    embedded: list  # UploadFiles that Vector.create_multimodal reads and embeds, in order
    skipped: list  # attachment ids it looked up as UploadFiles and did not find (silently skipped)
    downloads: list  # remote image URLs the indexer would fetch


def build_file(entry: dict, release: Release) -> None:
    """What constructing Dify's File from a chunk's ``files`` entry does: TypeError on a key the constructor does
    not take, or on a missing required one."""
    unexpected = sorted(set(entry) - release.file_keywords)
    if unexpected:
        raise TypeError(f"File.__init__() got an unexpected keyword argument '{unexpected[0]}' ({release.tag})")
    for alternatives in release.file_required:
        if not any(entry.get(key) is not None for key in alternatives):
            raise TypeError(f"File.__init__() missing required keyword argument '{alternatives[0]}' ({release.tag})")


def index_chunks(chunks, files: DifyFiles, release: Release) -> IndexOutcome:
    """ParagraphIndexProcessor.index for a General knowledge base
    (api/core/rag/index_processor/processor/paragraph_index_processor.py, 1.12.1 lines 199-262; 1.11.0 153-216;
    1.15.0 185-248): a dict is validated as MultimodalGeneralStructureChunk (api/core/rag/models/document.py: a
    ``general_chunks`` list of {content: str, files: list[File] | None}); a chunk with files binds each file's id
    as an attachment; a chunk without files gets the attachments its content's markdown images yield. Then
    Vector.create_multimodal (api/core/rag/datasource/vdb/vector_factory.py 1.12.1 lines 214-253) looks each
    attachment up as an UploadFile and embeds the ones it finds."""
    if isinstance(chunks, list):
        raise NotImplementedError("a list of texts: tool files in it are not taken (the indexer has no user)")
    if not isinstance(chunks, dict) or not isinstance(chunks.get("general_chunks"), list):
        raise ValueError("general_chunks: Field required")
    segments, downloads = [], []
    for chunk in chunks["general_chunks"]:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("content"), str):
            raise ValueError("content: Input should be a valid string")
        entries = chunk.get("files")
        if entries is not None and not isinstance(entries, list):
            raise ValueError("files: Input should be a valid list")
        if entries:
            for entry in entries:
                build_file(entry, release)
            segments.append(Segment(chunk["content"], [entry.get("id") or entry.get("file_id") for entry in entries]))
        else:
            segments.append(Segment(chunk["content"], content_files(chunk["content"], files, release, downloads)))
    wanted = [a for s in segments for a in s.attachments]
    embedded = [files.upload_files[a] for a in wanted if a in files.upload_files]
    skipped = [a for a in wanted if a not in files.upload_files]
    return IndexOutcome(segments, embedded, skipped, downloads)


def content_files(content: str, files: DifyFiles, release: Release, downloads: list) -> list:
    """_get_content_files with a user: the UploadFile ids the content's images yield (tool files copied through
    FileService by _download_tool_file), keeping only the ids that exist, as Dify does."""
    ids = []
    for url in MARKDOWN_IMAGE.findall(content):
        if preview := UPLOAD_PREVIEW.search(url):
            ids.append(preview.group(1))
        elif tool := TOOL_FILE.search(url):
            tool_file = files.tool_files.get(tool.group(1))
            if tool_file is not None:
                ids.append(files.upload_file_service(tool_file.name, tool_file.data, tool_file.mime_type,
                                                     release).id)
        else:
            downloads.append(url.split(" ")[0])
    return [i for i in ids if i in files.upload_files]


def format_preview(chunks) -> dict:
    """ParagraphIndexProcessor.format_preview (1.12.1 lines 264-275; 1.15.0 251-263), what a pipeline's Test run
    and *Preview chunks* call: a list of texts only; anything else raises ValueError('Chunks is not a list')."""
    if isinstance(chunks, list):
        return {"chunk_structure": "text_model", "preview": [{"content": c} for c in chunks],
                "total_segments": len(chunks)}
    raise ValueError("Chunks is not a list")

