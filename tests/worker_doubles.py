"""Work the tests hand to the plugin's worker process: it must be importable there (module-level functions),
and what it remembers lives there (module-level state), as with the service's own functions."""

from __future__ import annotations

import time

from crossmodal.context import ModelNotLoaded


def bulk_batch(k: int) -> tuple[str, float]:
    time.sleep(1.5)  # an ingest batch: a thread busy for a while
    return "bulk", time.monotonic()


def query_batch(k: int) -> tuple[str, float]:
    time.sleep(1.5)  # a search's encoding: a query thread busy for a while
    return "query", time.monotonic()


def workspace_search(settings, k: int) -> str:
    time.sleep(1.0)  # a search of the workspace whose settings it runs with
    return settings.data_dir


def lookup() -> tuple[str, float]:
    return "query", time.monotonic()


def stuck_in_a_load() -> None:
    time.sleep(2.0)


def slow_load() -> str:
    time.sleep(1.5)  # a model load: a thread busy for a while
    return "loaded"


def cached() -> str:
    return "cached"


class SlowModelService:
    """What retrieval_within_deadline uses of the service: a model that loads in ``seconds`` (the loaded flag
    lives in the worker process, as a real loaded model does)."""

    LOADED: dict[str, bool] = {}
    LOADING: dict[str, bool] = {}
    LOOKUPS: dict[str, int] = {}

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds = name, seconds

    def encoder(self, model: str) -> None:
        SlowModelService.LOADING[self.name] = True
        time.sleep(self.seconds)
        SlowModelService.LOADED[self.name] = True
        SlowModelService.LOADING[self.name] = False

    def model_loading(self, model: str) -> bool:
        return SlowModelService.LOADING.get(self.name, False)


def route_retrieval(service: SlowModelService, body: dict, request) -> dict:
    SlowModelService.LOOKUPS[service.name] = SlowModelService.LOOKUPS.get(service.name, 0) + 1
    if not SlowModelService.LOADED.get(service.name):
        raise ModelNotLoaded("the-model")
    return {"records": [{"content": "hit"}], "lookups": SlowModelService.LOOKUPS[service.name]}


def deadline_misses() -> dict:
    from crossmodal import lanes

    return {f"{k[0]}/{k[1]}": v for k, v in lanes.DEADLINE_MISSES.items()}
