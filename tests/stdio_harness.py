"""Drive `python -m main` over stdio exactly as Dify's plugin daemon does (local install)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_IDENTITY = "__dify__file__"
# The daemon reads the plugin's stdout with this line limit (PLUGIN_STDIO_MAX_BUFFER_SIZE); past it, it stops
# reading and kills the plugin process with every session in flight. The harness does the same.
MAX_LINE_BYTES = 5 * 1024 * 1024
WORKER_READY = "the worker process is ready"  # the plugin's log line when its worker process serves calls


MISSING_MODULES = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed for this package)", name=name)
sys.meta_path.insert(0, Missing())
"""


def missing_modules_path(names: tuple[str, ...]) -> str:
    """A folder whose ``sitecustomize`` makes ``names`` fail to import in every interpreter that has it on its
    path: the plugin and the worker processes it starts (they inherit its module path)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="missing-modules-")
    Path(folder, "sitecustomize.py").write_text(MISSING_MODULES.format(names=tuple(names)))
    return folder


class PluginKilled(RuntimeError):
    """The harness killed the plugin as the daemon would (a stdout line over MAX_LINE_BYTES)."""


class PluginProcess:
    def __init__(self, env: dict | None = None, heartbeat_interval: float = 0.5, cwd: Path = ROOT,
                 unset: tuple[str, ...] = (), dify=None, missing: tuple[str, ...] = (), python: str | None = None,
                 command: list[str] | None = None):
        """``command``: the interpreter's arguments instead of ``-m main`` (a wrapper that changes the plugin).
        ``dify``: answers the plugin's backwards invocations as Dify would, ``dify(type, request) -> dict``
        (raising for an error); the daemon's permission check against the plugin's manifest comes first.
        ``python``: the interpreter of the plugin's own environment (default: this one)."""
        self.dify = dify
        self.permissions = _permissions(Path(cwd) / "manifest.yaml")
        self.invocations: list[tuple[str, dict]] = []  # (type, request) of each backwards invocation
        # The tests name their stores and models by path (temporary folders): the admin's switch for that. A
        # test of the daemon's own layout unsets it (inside Dify a workspace names no path).
        full_env = {**os.environ, "INSTALL_METHOD": "local", "HEARTBEAT_INTERVAL": str(heartbeat_interval),
                    "PYTHONUNBUFFERED": "1", "CROSSMODAL_ALLOW_PATHS": "1", **(env or {})}
        for name in unset:
            full_env.pop(name, None)
        # ``missing``: top-level modules the plugin must run without, as if not installed (an import fails).
        python = python or sys.executable
        if missing:
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [missing_modules_path(tuple(missing)),
                                                                   full_env.get("PYTHONPATH")]))
        command = [python, *(command or ["-m", "main"])]
        self.proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: queue.Queue = queue.Queue()
        self.unfinished: dict[str, list[dict]] = {}  # messages of sessions a partial collect left open
        self.ended: dict[str, list[dict]] = {}  # sessions that ended while another collect was reading
        self.heartbeats: list[float] = []
        self.non_json: list[str] = []
        self.oversized: list[int] = []  # lengths of stdout lines over MAX_LINE_BYTES
        self.longest_line = 0
        self.stderr_lines: list[str] = []
        self.logs: list[str] = []  # the plugin's log lines (the SDK sends them as "log" events)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            self.longest_line = max(self.longest_line, len(raw))
            if len(raw) > MAX_LINE_BYTES:
                self.oversized.append(len(raw))
                self.proc.kill()  # what the daemon does
                return
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.non_json.append(line)
                continue
            if event.get("event") == "heartbeat":
                self.heartbeats.append(time.monotonic())
            elif event.get("event") == "log":
                self.logs.append(str((event.get("data") or {}).get("message", "")))
            self.events.put(event)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    def wait_ready(self, timeout: float = 120, worker: bool = True) -> None:
        """Until the first heartbeat (what the daemon waits for) and, with ``worker``, until the plugin's worker
        process is ready too (calls before that wait for it within their deadlines: a test with a deadline of a
        second would otherwise measure the worker's start)."""
        deadline = time.monotonic() + timeout
        while not self.heartbeats or (worker and not self.worker_ready()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("plugin never became ready:\n" + "".join(self.stderr_lines[-40:]))
            time.sleep(0.05)

    def worker_ready(self) -> bool:
        return any(WORKER_READY in line for line in self.logs)

    def send(self, data: dict, session_id: str | None = None) -> str:
        session_id = session_id or uuid.uuid4().hex
        line = json.dumps({"session_id": session_id, "event": "request", "data": data}) + "\n"
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        return session_id

    def collect(self, session_ids, timeout: float = 120, partial: bool = False,
                first: bool = False, quiet: float | None = None) -> dict[str, list[dict]]:
        """Messages per session until each has ended; other events stay queued for later calls. ``partial``: at
        the timeout, return the sessions that ended instead of raising; ``first``: return as soon as one ends;
        ``quiet`` (with ``partial``): return once none of the sessions has sent anything for that many seconds
        (heartbeats do not count: a plugin that parked its requests keeps sending them)."""
        pending, done = {}, {}
        for sid in [session_ids] if isinstance(session_ids, str) else session_ids:
            if sid in self.ended:
                done[sid] = self.ended.pop(sid)
            else:
                pending[sid] = self.unfinished.pop(sid, [])
        deadline = time.monotonic() + timeout
        last_news = time.monotonic()
        while pending and not (first and done):
            if quiet is not None and partial and time.monotonic() - last_news > quiet:
                break
            remaining = deadline - time.monotonic()
            if self.oversized:
                raise PluginKilled(f"the plugin wrote a {self.oversized[0]}-byte stdout line, over the daemon's "
                                   f"{MAX_LINE_BYTES}-byte limit: the daemon kills it")
            if remaining <= 0 and partial:
                break
            if remaining <= 0:
                raise TimeoutError(f"sessions {list(pending)} did not end; stderr:\n" + "".join(self.stderr_lines[-30:])
                                   + self.stacks())
            try:
                event = self.events.get(timeout=min(remaining, 1))
            except queue.Empty:
                continue
            sid = event.get("session_id")
            if event.get("event") != "session":
                continue
            if sid not in pending:
                self._keep(sid, event["data"])
                continue
            data = event["data"]
            last_news = time.monotonic()
            if data["type"] == "invoke":
                self._answer(sid, data["data"])
                continue
            if data["type"] == "end":
                done[sid] = pending.pop(sid)
                if first:
                    break
            else:
                pending[sid].append(data)
        self.unfinished.update(pending)  # a partial collect keeps what the open sessions sent so far
        return done

    def _keep(self, session_id: str, data: dict) -> None:
        """A message of a session this collect is not reading: kept in order for the collect that will (putting
        it back on the queue could put it after its own session's end), and a call into Dify answered now, as
        the daemon does whoever is reading."""
        if data["type"] == "invoke":
            self._answer(session_id, data["data"])
        elif data["type"] == "end":
            self.ended[session_id] = self.unfinished.pop(session_id, [])
        else:
            self.unfinished.setdefault(session_id, []).append(data)

    def _answer(self, session_id: str, invocation: dict) -> None:
        """What the daemon does with a backwards invocation: check the manifest's permission, ask Dify, and
        write the answer (one response, then end; or an error, then end) on the plugin's stdin."""
        kind, request_id, request = invocation["type"], invocation["backwards_request_id"], invocation["request"]
        self.invocations.append((kind, request))
        needed = INVOKE_PERMISSIONS.get(kind)
        replies = []
        if needed != ALWAYS and (needed is None or not self.permissions.get(needed)):
            replies.append({"event": "error", "message": f"permission denied, you need to enable {needed or kind} "
                            "access in plugin manifest", "data": None})
        else:
            try:
                replies.append({"event": "response", "message": "struct",
                                "data": self.dify({**request, "type": kind, "tenant_id": "t1", "user_id": "u1"})})
            except Exception as exc:  # noqa: BLE001 - Dify's failure, passed on as the daemon does
                replies.append({"event": "error", "message": f"invoke {kind} model failed: {exc}", "data": None})
        replies.append({"event": "end", "message": "", "data": None})
        for reply in replies:
            line = json.dumps({"session_id": session_id, "event": "backwards_response",
                               "data": {"backwards_request_id": request_id, **reply}}) + "\n"
            self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def stacks(self) -> str:
        """The plugin's threads and greenlets (main.py dumps them to stderr on SIGUSR1), for a hang's report."""
        if self.proc.poll() is not None:
            return ""
        seen = len(self.stderr_lines)
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        return "\nthe plugin's stacks:\n" + "".join(self.stderr_lines[seen:])

    def call(self, data: dict, timeout: float = 120) -> list[dict]:
        sid = self.send(data)
        return self.collect(sid, timeout)[sid]

    def invoke_tool(self, tool: str, params: dict, credentials: dict, timeout: float = 120) -> list[dict]:
        return self.call(tool_request(tool, params, credentials), timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


# The daemon's permission for each backwards invocation type (its backwards_invocation permissionMapping);
# it lets every plugin upload files, whatever its manifest says.
ALWAYS = "always"
INVOKE_PERMISSIONS = {"text_embedding": "text-embedding", "multimodal_embedding": "text-embedding",
                      "rerank": "rerank", "multimodal_rerank": "rerank", "upload_file": ALWAYS}


def _permissions(manifest: Path) -> dict:
    """The model permissions a manifest grants (resource.permission.model)."""
    import yaml

    if not manifest.is_file():
        return {}
    model = ((yaml.safe_load(manifest.read_text()).get("resource") or {}).get("permission") or {}).get("model") or {}
    enabled = bool(model.get("enabled"))
    return {"text-embedding": enabled and bool(model.get("text_embedding")),
            "rerank": enabled and bool(model.get("rerank"))}


def tool_request(tool: str, params: dict, credentials: dict) -> dict:
    return {"user_id": "u1", "type": "tool", "action": "invoke_tool", "provider": "crossmodal", "tool": tool,
            "credentials": credentials, "credential_type": "api-key", "tool_parameters": params}


def validate_request(credentials: dict) -> dict:
    return {"user_id": "u1", "type": "tool", "action": "validate_tool_credentials", "provider": "crossmodal",
            "credentials": credentials}


def dify_file(url: str, filename: str, size: int, mime: str = "image/png") -> dict:
    return {"dify_model_identity": FILE_IDENTITY, "url": url, "mime_type": mime, "filename": filename,
            "extension": "." + filename.rsplit(".", 1)[-1], "size": size, "type": "image"}


def stream_messages(messages: list[dict]) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "stream"]


def errors(messages: list[dict]) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "error"]


def variables(messages: list[dict]) -> dict:
    return {m["message"]["variable_name"]: m["message"]["variable_value"]
            for m in stream_messages(messages) if m.get("type") == "variable"}


def json_message(messages: list[dict]) -> dict:
    found = [m["message"]["json_object"] for m in stream_messages(messages) if m.get("type") == "json"]
    assert found, f"no json message in {messages}"
    return found[-1]


def blobs(messages: list[dict]) -> list[tuple[bytes, dict]]:
    """Reassemble blob_chunk streams into (bytes, meta), in the order they ended."""
    import base64

    parts: dict[str, list[bytes]] = {}
    out = []
    for m in stream_messages(messages):
        if m.get("type") != "blob_chunk":
            continue
        chunk = m["message"]
        parts.setdefault(chunk["id"], []).append(base64.b64decode(chunk["blob"]))
        if chunk["end"]:
            out.append((b"".join(parts.pop(chunk["id"])), m.get("meta") or {}))
    return out


def raw_http(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """A raw HTTP/1.1 request as the daemon forwards it (the /e/{hook_id} prefix already stripped)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: dify.local"]
    for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# The daemon forwards at most this much of an endpoint request's body (io.LimitReader in its copyRequest),
# cutting the rest without a word and setting Content-Length to what is left.
DAEMON_BODY_BYTES = 10 * 1024 * 1024


def endpoint_request(settings: dict, method: str, path: str, body=None, headers: dict | None = None,
                     raw_body: bytes | None = None) -> dict:
    headers = dict(headers or {})
    if raw_body is None:
        raw_body = b"" if body is None else json.dumps(body).encode()
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
    raw_body = raw_body[:DAEMON_BODY_BYTES]
    headers["Content-Length"] = str(len(raw_body))
    raw = raw_http(method, path, raw_body, headers)
    return {"type": "endpoint", "action": "invoke_endpoint", "settings": settings, "raw_http_request": raw.hex()}


def http_response(messages: list[dict]) -> tuple[int, dict, bytes]:
    """(status, headers, body) from an endpoint's stream."""
    status, headers, body = None, {}, b""
    for message in stream_messages(messages):
        if "status" in message:
            status, headers = message["status"], message.get("headers", {})
        if message.get("result"):
            body += bytes.fromhex(message["result"])
    assert status is not None, messages
    return status, headers, body
