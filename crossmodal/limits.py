"""Every limit of the plugin in one place: each wait's deadline and each resource's budget (time, bytes,
pixels, pages, figures, queued calls, open collections), what it bounds, its default, and who may change it.

One plugin process serves every workspace of a Dify, so the limits belong to the Dify admin, who runs the
plugin's container: the admin sets a limit through the plugin's environment (``CROSSMODAL_<NAME>``, within its
hard cap). A workspace may only *narrow* the limits marked ``workspace``, through the ``limits`` credential of
the tool provider or the endpoint's setting (a JSON object such as ``{"pdf_pages": 50}``): a value above the
admin's is refused when the credential is saved and capped at the admin's when a call runs.

Code reads a limit with ``limit("pdf_pages")``: the admin's value, narrowed by the workspace of the call in
progress (``narrowed_by``, which the service layer enters for each capability call). docs/reliability.md has
the table ``limits_table()`` writes; a test keeps the two equal.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

from crossmodal.errors import CrossmodalError

logger = logging.getLogger(__name__)
ADMIN, WORKSPACE = "admin", "admin; a workspace may narrow it"


@dataclass(frozen=True)
class Limit:
    name: str
    default: float
    unit: str
    bounds: str  # what it bounds, for the docs table and error messages
    cap: float | None = None  # the most an admin may set (None: no cap beyond the default's kind)
    minimum: float = 0.0  # the least anyone may set
    workspace: bool = False  # whether a workspace may narrow it
    integer: bool = True

    @property
    def env(self) -> str:
        return "CROSSMODAL_" + self.name.upper()

    def parse(self, raw, who: str) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise CrossmodalError(f"'{raw}' is not a number ({self.unit})", param=who) from None
        if math.isnan(value) or value < self.minimum or (self.cap is not None and value > self.cap):
            top = f" and {self.cap:g}" if self.cap is not None else ""
            raise CrossmodalError(f"{value:g} is out of range; use a value between {self.minimum:g}{top} "
                                  f"({self.unit})", param=who)
        return int(value) if self.integer else value


LIMITS: dict[str, Limit] = {}


def register(name: str, default: float, unit: str, bounds: str, *, cap: float | None = None,
             minimum: float = 0.0, workspace: bool = False, integer: bool = True) -> Limit:
    """Declare a limit (modules declare theirs at import, beside the code it protects)."""
    limit_ = Limit(name, default, unit, bounds, cap, minimum, workspace, integer)
    existing = LIMITS.get(name)
    if existing is not None and existing != limit_:
        raise ValueError(f"limit {name} declared twice, differently")
    LIMITS[name] = limit_
    return limit_


def admin_value(name: str) -> float:
    """The admin's value: the environment's ``CROSSMODAL_<NAME>``, else the default. A value the limit refuses
    is logged and the default used (the plugin still starts)."""
    declared = LIMITS[name]
    raw = os.environ.get(declared.env, "").strip()
    if not raw:
        return declared.default
    try:
        return declared.parse(raw, declared.env)
    except CrossmodalError as exc:
        logger.error("%s: %s; using the default %g", declared.env, exc, declared.default)
        return declared.default


_NARROWED: contextvars.ContextVar[Mapping[str, float]] = contextvars.ContextVar("crossmodal_limits", default={})


def limit(name: str) -> float:
    """The limit for the call in progress: the admin's, narrowed by its workspace."""
    value = admin_value(name)
    narrowed = _NARROWED.get().get(name)
    return value if narrowed is None else min(value, narrowed)


@contextlib.contextmanager
def narrowed_by(workspace_limits: Mapping[str, float] | None) -> Iterator[None]:
    """Within this block, ``limit`` takes the workspace's narrower values into account."""
    token = _NARROWED.set(dict(workspace_limits or {}))
    try:
        yield
    finally:
        _NARROWED.reset(token)


def current_narrowing() -> dict[str, float]:
    """The workspace's values in force (what a worker thread or process re-enters for the same call)."""
    return dict(_NARROWED.get())


def parse_workspace_limits(raw, param: str = "limits") -> dict[str, float]:
    """A workspace's ``limits`` credential (a JSON object) -> {name: value}; unknown names, limits a workspace
    may not change and values above the admin's are refused with a message naming them."""
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CrossmodalError(f"is not valid JSON ({exc.msg}); example: {{\"pdf_pages\": 50}}", param=param) from None
    if not isinstance(raw, dict):
        raise CrossmodalError("must be a JSON object such as {\"pdf_pages\": 50}", param=param)
    out = {}
    for name, value in raw.items():
        declared = LIMITS.get(name)
        if declared is None or not declared.workspace:
            choices = ", ".join(sorted(n for n, d in LIMITS.items() if d.workspace))
            raise CrossmodalError(f"'{name}' is not a limit a workspace can set; these are: {choices}",
                                  param=f"{param}.{name}")
        parsed = declared.parse(value, f"{param}.{name}")
        admin = admin_value(name)
        if parsed > admin:
            raise CrossmodalError(f"{parsed:g} is above the admin's limit of {admin:g} ({declared.unit}); a "
                                  "workspace can only lower limits (the admin raises them in the plugin's "
                                  f"environment, {declared.env})", param=f"{param}.{name}")
        out[name] = parsed
    return out


def limits_table() -> str:
    """The markdown table of docs/reliability.md: each limit, its default, and who may change it."""
    rows = ["| limit | what it bounds | default | admin's variable (cap) | who may change it |",
            "|---|---|---|---|---|"]
    for declared in sorted(LIMITS.values(), key=lambda d: d.name):
        cap = f" (≤ {_number(declared.cap)})" if declared.cap is not None else ""
        rows.append(f"| `{declared.name}` | {declared.bounds} | {_number(declared.default)} {declared.unit} | "
                    f"`{declared.env}`{cap} | {WORKSPACE if declared.workspace else ADMIN} |")
    return "\n".join(rows)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def load_all() -> None:
    """Import every module that declares limits, so that the table is complete (docs and tests)."""
    import importlib

    for module in DECLARING_MODULES:
        importlib.import_module(module)


# Modules that declare limits (each beside the code its limits protect).
DECLARING_MODULES: list[str] = ["crossmodal.lanes", "crossmodal.workers.supervisor", "crossmodal.inputs.urls",
                                 "crossmodal.api.http", "crossmodal.inputs.images", "crossmodal.inputs.pdf",
                                 "crossmodal.ingest.documents", "crossmodal.store.filters", "crossmodal.store.edge",
                                 "crossmodal.search.searcher", "crossmodal.api.image_links"]
