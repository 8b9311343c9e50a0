"""What both adapters share: options, the pipeline, the per-request start and the responses.

The adapters only translate an ASGI scope or a WSGI environ into the calls below and the
results back into ASGI messages or a WSGI response; every decision is made here or in the
policies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .context import RequestContext, new_request_id
from .exceptions import ConfigurationError
from .pipeline import GatewaySettings, Pipeline, ResponseHead, RouteTable, _Plan
from .request import Request, TrustedProxies
from .responses import DEFAULT_RESPONSES, Deny, GatewayResponses, Respond
from .routes import RouteMatch, Stage

_UUID = re.compile(rb"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
logger = logging.getLogger("apigw_mw")
_MISSING_TOKEN = Deny("MISSING_AUTHENTICATION_TOKEN")
_TOO_LARGE = Deny("REQUEST_TOO_LARGE")
_BAD_LENGTH = Deny("DEFAULT_4XX", "Bad Request")


class Gateway:
    """The configured gateway: built once per middleware instance."""

    __slots__ = (
        "_routes",
        "api_id",
        "base_path",
        "context_class",
        "empty",
        "integration_timeout",
        "max_body_size",
        "pipeline",
        "proxies",
        "responses",
        "stage",
        "stage_name",
        "stage_vars",
    )

    def __init__(
        self,
        *,
        policies: Iterable[Any],
        stage: Stage | None,
        responses: GatewayResponses | None,
        storage: str,
        trusted_proxies: Sequence[str],
        max_body_size: int | None,
        integration_timeout: float | None,
        strict_routes: bool,
        mode: str,
    ) -> None:
        if isinstance(policies, (str, bytes)) or not isinstance(policies, Iterable):
            raise ConfigurationError("policies", "must be a list of policies")
        policy_list: list[Any] = []
        extra_routes: list[str] = []
        strict: bool | None = None
        for i, entry in enumerate(policies):
            if isinstance(entry, Stage):
                if stage is not None and stage is not entry:
                    raise ConfigurationError(f"policies[{i}]", "a Stage is given twice")
                stage = entry
            elif isinstance(entry, GatewayResponses):
                responses = entry if responses is None else entry.merged(responses)
            elif isinstance(entry, RouteTable):
                extra_routes.extend(entry.routes)
                if entry.strict is not None:
                    strict = entry.strict
            elif isinstance(entry, (list, tuple)):
                raise ConfigurationError(f"policies[{i}]", "nested lists are not policies")
            else:
                policy_list.append(entry)
        if stage is None:
            stage = Stage()
        elif not isinstance(stage, Stage):
            raise ConfigurationError("stage", "must be a Stage")
        if responses is None:
            responses = DEFAULT_RESPONSES
        elif not isinstance(responses, GatewayResponses):
            raise ConfigurationError("responses", "must be a GatewayResponses")
        if not isinstance(storage, str) or "://" not in storage:
            raise ConfigurationError("storage", f"{storage!r} is not a storage URI (memory://)")
        if isinstance(trusted_proxies, str):
            trusted_proxies = [trusted_proxies]
        if max_body_size is not None and (
            not isinstance(max_body_size, int)
            or isinstance(max_body_size, bool)
            or max_body_size < 0
        ):
            raise ConfigurationError("max_body_size", "must be a non-negative int or None")
        if integration_timeout is not None and (
            not isinstance(integration_timeout, (int, float))
            or isinstance(integration_timeout, bool)
            or integration_timeout <= 0
        ):
            raise ConfigurationError("integration_timeout", "must be a positive number or None")
        if strict is None:
            strict = bool(strict_routes)
        self.stage = stage
        self.stage_name = stage.name
        self.stage_vars = stage.variables
        self.api_id = stage.api_id
        self.base_path = stage.base_path
        self.responses = responses
        self.proxies = TrustedProxies(list(trusted_proxies))
        self.max_body_size = max_body_size
        self.integration_timeout = integration_timeout
        settings = GatewaySettings(
            stage=stage, storage=storage, trusted_proxies=self.proxies, mode=mode
        )
        self.pipeline = Pipeline(policy_list, settings, extra_routes, strict)
        self.empty = self.pipeline.empty
        self.context_class = RequestContext._for_stage(stage)
        self._routes: dict[tuple[str, str], tuple[_Plan, Any, Any]] = {}

    # -- per request ----------------------------------------------------------------------

    def request_id(self, supplied: bytes | None) -> str:
        """Keep a client-supplied UUID request id, replace anything else."""
        if supplied is not None and _UUID.match(supplied):
            return supplied.decode("ascii")
        return new_request_id()

    def route_path(self, path: str) -> str | None:
        """The path routes match against (base path stripped), or None if outside it."""
        return path if self.base_path is None else self.stage.route_path(path)

    def context(self, request: Request, request_id: str, protocol: str) -> RequestContext:
        return self.context_class._new(
            request_id, request.method, request.path, protocol, None, request
        )

    def route(
        self, request: Request, ctx: RequestContext, route_path: str | None
    ) -> tuple[_Plan, Deny | Respond | None]:
        """Match the request, fill the context's route fields, pick the plan."""
        pipeline = self.pipeline
        if route_path is not None:
            if not pipeline.has_routes and not pipeline.strict:
                plan = pipeline._global_plan  # no route declared: nothing to match
                return (plan.for_method(request.method) if plan.method_bound else plan), None
            # A busy route costs one lookup: the plan and the route fields, remembered.
            hit = self._routes.get((request.method, route_path))
            if hit is not None:
                plan, best, params = hit
                ctx.route_key = best.key
                ctx.resource_path = best.path or None
                ctx.path_parameters = params
                return plan, None
        if route_path is None:
            match: RouteMatch | None = None
        else:
            match = pipeline.match(request.method, route_path)
            best = match.best
            if best is not None:
                ctx.route_key = best.key
                ctx.resource_path = best.path or None
                ctx.path_parameters = match.path_parameters
        if match is None or match.best is None:
            if pipeline.strict:
                preflight = pipeline.preflight_plan
                if preflight is not None and request.method == "OPTIONS":
                    return preflight, None
                return pipeline._global_plan, _MISSING_TOKEN
            plan = pipeline._global_plan
        else:
            plan = pipeline.plan(match)
            if plan.method_bound:
                plan = plan.for_method(request.method)
            if route_path is not None:
                routes = self._routes
                if len(routes) >= 4096:
                    routes.clear()  # many distinct paths: start over rather than grow
                routes[(request.method, route_path)] = (plan, match.best, match.path_parameters)
            return plan, None
        return (plan.for_method(request.method) if plan.method_bound else plan), None

    def too_large(self, content_length: bytes | None) -> Deny | None:
        """400 for a malformed ``Content-Length``, 413 for one over ``max_body_size``."""
        if content_length is None:
            return None
        # Only ASCII digits: int() would also take "+5", "1_0", " 5" and other scripts' digits.
        if not content_length.isdigit():
            return _BAD_LENGTH
        limit = self.max_body_size
        if limit is None:
            return None
        return _TOO_LARGE if int(content_length) > limit else None

    def gateway_response(
        self,
        decision: Deny | Respond,
        request: Request | None,
        ctx: RequestContext,
        plan: _Plan,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body of a gateway answer, with response hooks applied."""
        if isinstance(decision, Deny):
            status, headers, body = self.responses.render(decision, request, ctx)
        else:
            status, body = decision.status, decision.body
            headers = list(decision.headers)
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append((b"x-amzn-requestid", ctx.request_id.encode("latin-1")))
        ctx.status = status
        ctx.response_length = len(body)
        if plan.response_hooks and request is not None:
            head = ResponseHead(status, headers, from_gateway=True)
            self.on_response(plan, request, ctx, head)
            headers = head.headers
        return status, headers, body

    def on_response(
        self, plan: _Plan, request: Request, ctx: RequestContext, head: ResponseHead
    ) -> None:
        for policy in plan.response_hooks:
            try:
                policy.on_response(request, ctx, head)
            except Exception:
                logger.exception("on_response of %s failed", type(policy).__name__)

    def request_hooks(self, plan: _Plan, request: Request, ctx: RequestContext) -> None:
        for policy in plan.request_hooks:
            try:
                policy.on_request(request, ctx)
            except Exception:
                logger.exception("on_request of %s failed", type(policy).__name__)

    def complete_hooks(self, plan: _Plan, request: Request, ctx: RequestContext) -> None:
        for policy in plan.complete_hooks:
            try:
                policy.on_complete(request, ctx)
            except Exception:
                logger.exception("on_complete of %s failed", type(policy).__name__)
