"""Routing from the MLflow registry: champion/challenger aliases, canary weight and prompts.

`RegistryRouteProvider` polls the registry in a daemon thread and publishes an
immutable `RouteTable` by one reference assignment, so a request reads either
the old table or the new one, never a mix. When MLflow cannot be reached it
keeps serving the last good table and says so in `health()`.

The canary weight is the challenger version's tag `flywheel.canary_weight`, a
fraction in [0, 1] ("0.05" sends 5% of users to the challenger). A value that
is not a number in that range is ignored (weight 0, champion only) with a
warning: sending users to a challenger by mistake is worse than not canarying.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import registry
from flywheel.settings import ModelParams, ProjectParams
from gateway.contracts import Arm, Route, RouteTable
from registry import CANARY_WEIGHT_TAG, ModelVersionInfo, PromptVersionInfo, RoutingSnapshot

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], RoutingSnapshot]


def parse_canary_weight(raw: str | None) -> tuple[float, str | None]:
    """The canary weight from the tag's text, and why it was ignored (None when valid or absent)."""
    if raw is None or not raw.strip():
        return 0.0, None
    try:
        weight = float(raw)
    except ValueError:
        return 0.0, f"{CANARY_WEIGHT_TAG}={raw!r} is not a number"
    if not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        return 0.0, f"{CANARY_WEIGHT_TAG}={raw!r} is outside [0, 1] (a fraction, not a percentage)"
    return weight, None


def system_prompt_of(template: str | list[dict[str, str]]) -> str | None:
    """The system message of a chat template, or a text template itself."""
    if isinstance(template, str):
        return template.strip() or None
    for message in template:
        if message.get("role") == "system" and message.get("content", "").strip():
            return message["content"]
    return None


def base_model_name(model_params: ModelParams) -> str:
    """The base model's name: its GGUF file without the extension, else its folder's name."""
    if model_params.gguf_file is not None:
        return model_params.gguf_file.removesuffix(".gguf")
    return Path(model_params.source).name


def adapter_uri_of(version: ModelVersionInfo) -> str:
    """Where a registered version's adapter lives: by name and version, which MLflow never changes."""
    return f"models:/{version.name}/{version.version}"


class RegistryRouteProvider:
    """A `RouteProvider` that follows the registry's aliases, polling every `poll_seconds`."""

    def __init__(
        self,
        project: ProjectParams,
        model_params: ModelParams,
        poll_seconds: float,
        fetch: Fetch = registry.read_routing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.model_params = model_params
        self.poll_seconds = poll_seconds
        self._fetch = fetch
        self._clock = clock
        self._table = self.default_table()
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        self._error: str | None = None
        self._warned: set[str] = set()
        self._refresh_lock = threading.Lock()  # one fetch at a time (poller and refresh_now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the RouteProvider protocol ---------------------------------------------

    def current(self) -> RouteTable:
        """The table to route this request by (a consistent snapshot)."""
        return self._table

    def health(self) -> Mapping[str, object]:
        """Registry state for /healthz: "ok", "degraded" (serving the last good table) or "starting"."""
        table = self._table
        if self._error is not None:
            state = "degraded"
        elif self._last_success is None:
            state = "starting"
        else:
            state = "ok"
        return {
            "registry": state,
            "error": self._error,
            "last_success": self._last_success,
            "last_attempt": self._last_attempt,
            "source": table.source,
            "champion": _describe(table.champion),
            "challenger": _describe(table.challenger) if table.challenger is not None else None,
            "canary_weight": table.canary_weight,
        }

    # -- polling ----------------------------------------------------------------

    def default_table(self) -> RouteTable:
        """What to serve before anything is registered: the base model with the params' system prompt."""
        route = Route(
            arm="champion",
            model_name=base_model_name(self.model_params),
            model_version=None,
            system_prompt=self.model_params.system_prompt,
        )
        return RouteTable(champion=route, source="default", fetched_at=self._clock())

    def refresh_now(self) -> RouteTable:
        """Read the registry once and publish the new table; on failure keep the last good one."""
        with self._refresh_lock:
            self._last_attempt = self._clock()
            try:
                snapshot = self._fetch(self.project.registered_model, self.project.prompt_name)
                table = self.build_table(snapshot)
            except Exception as error:
                # Whatever went wrong (MLflow down, a malformed version), the answer is the same:
                # keep serving the last good table and report it; the poller must not die.
                if self._error is None:
                    log.warning("registry unreachable, keeping the last good routes: %s", error)
                self._error = f"{type(error).__name__}: {error}"
                return self._table
            if self._error is not None:
                log.info("registry reachable again")
            self._table = table  # the swap: one reference assignment
            self._error = None
            self._last_success = table.fetched_at
            return table

    def build_table(self, snapshot: RoutingSnapshot) -> RouteTable:
        """Turn a registry snapshot into a route table (pure apart from logging)."""
        champion_prompt = snapshot.champion_prompt
        champion = self._route("champion", snapshot.champion, champion_prompt)
        challenger: Route | None = None
        weight = 0.0
        if snapshot.challenger is not None or snapshot.challenger_prompt is not None:
            # A prompt-only candidate runs on the champion's model, and vice versa.
            candidate = self._route(
                "challenger",
                snapshot.challenger or snapshot.champion,
                snapshot.challenger_prompt or champion_prompt,
            )
            if replace(candidate, arm="champion") != champion:
                challenger = candidate
                weight = self._weight(snapshot)
        registered = any(
            item is not None
            for item in (snapshot.champion, snapshot.challenger, champion_prompt, snapshot.challenger_prompt)
        )
        return RouteTable(
            champion=champion,
            challenger=challenger,
            canary_weight=weight,
            source="registry" if registered else "default",
            fetched_at=self._clock(),
        )

    def _route(self, arm: Arm, version: ModelVersionInfo | None, prompt: PromptVersionInfo | None) -> Route:
        system_prompt = system_prompt_of(prompt.template) if prompt is not None else None
        return Route(
            arm=arm,
            # The contract: the registered model's name, or the base model's when none is registered.
            model_name=version.name if version is not None else base_model_name(self.model_params),
            model_version=version.version if version is not None else None,
            adapter_uri=adapter_uri_of(version) if version is not None else None,
            prompt_name=prompt.name if prompt is not None else None,
            prompt_version=prompt.version if prompt is not None else None,
            system_prompt=system_prompt or self.model_params.system_prompt,
        )

    def _weight(self, snapshot: RoutingSnapshot) -> float:
        weight, problem = parse_canary_weight(snapshot.canary_weight_tag)
        if problem is not None and problem not in self._warned:
            # Once per distinct bad value: the poller would otherwise repeat it every interval.
            self._warned.add(problem)
            log.warning("ignoring the canary weight (challenger gets no traffic): %s", problem)
        return weight

    def start(self, *, initial_refresh: bool = True) -> None:
        """Read the registry once (unless told not to), then keep polling in a daemon thread."""
        if self._thread is not None:
            return
        if initial_refresh:
            self.refresh_now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="registry-poller", daemon=True)
        self._thread.start()

    @property
    def polling(self) -> bool:
        """Whether the poller thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling (waits for a fetch in progress up to `timeout_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh_now()


def _describe(route: Route) -> str:
    version = route.model_version or "base"
    prompt = f" prompt {route.prompt_name}@{route.prompt_version}" if route.prompt_name else ""
    return f"{route.model_name}@{version}{prompt}"
