"""Policies, their phases, and the pipeline that runs them with a sync or an async driver.

A policy is an object with a ``phase`` and a ``flow(request, context)`` method. The flow is
either a plain function returning a decision, or a generator that yields effects (see
:mod:`apigw_mw.effects`) and returns a decision. Decisions: ``None`` or :class:`Allow` (go
on), :class:`Deny` (answer with a gateway response), :class:`Respond` (answer with a normal
response, without calling the app).

The pipeline runs the policies that apply to a request in the gateway's fixed phase order,
whatever order they were listed in, and list order only within a phase. It is itself a
generator that yields *batches* of effects; two small drivers perform them, one blocking
(WSGI) and one with ``await`` (ASGI). Effects of one phase that share a batcher (token-bucket
hits against one storage) are performed together.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from time import perf_counter_ns
from types import GeneratorType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, runtime_checkable

from .context import Identity
from .effects import Effect, ReadBody
from .exceptions import ConfigurationError, GatewayError
from .responses import Allow, Deny, Respond
from .routes import RouteMatch, RoutePattern, Router, Stage

if TYPE_CHECKING:
    from .context import RequestContext
    from .request import Request, TrustedProxies

__all__ = [
    "BasePolicy",
    "Decision",
    "GatewaySettings",
    "Phase",
    "Policy",
    "ResponseHead",
    "RouteTable",
]

logger = logging.getLogger("apigw_mw")

Decision = Allow | Deny | Respond | None
Outcome = Deny | Respond | None
Flow = Generator[Any, Any, Decision]
_CONFIG_ERROR = Deny("API_CONFIGURATION_ERROR")
_BODY_TOO_LARGE = Deny("REQUEST_TOO_LARGE")
_MISSING_ROUTE = Deny("MISSING_AUTHENTICATION_TOKEN")


class Phase(IntEnum):
    """The gateway's fixed request phases, in the order they run.

    ``OBSERVE`` holds observers (tracing, access logs, metrics) that watch every request
    through the ``on_request`` / ``on_complete`` hooks rather than decide it; ``CORS``
    answers preflights; ``RESOURCE_POLICY`` applies source-IP rules; ``MTLS`` checks
    client certificates; ``THROTTLE`` holds the limits that need no caller identity (stage,
    route, source IP), shielding the authorizers from floods; ``AUTHORIZE`` runs
    authorizers; ``API_KEY`` checks API keys with their usage plans and quotas; ``VALIDATE``
    validates the request; ``CACHE`` answers from the response cache.
    """

    OBSERVE = 0
    CORS = 10
    RESOURCE_POLICY = 20
    MTLS = 30
    THROTTLE = 40
    AUTHORIZE = 50
    API_KEY = 60
    VALIDATE = 70
    CACHE = 80


class ResponseHead:
    """The status and headers of a response on its way out, for ``on_response`` hooks.

    ``headers`` is a list of ``(lower-case name, value)`` byte pairs that hooks may edit.
    ``from_gateway`` is true for gateway responses and ``Respond`` answers.
    """

    __slots__ = ("from_gateway", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], from_gateway: bool = False
    ) -> None:
        self.status = status
        self.headers = headers
        self.from_gateway = from_gateway


@runtime_checkable
class Policy(Protocol):
    """What the gateway needs from a policy.

    Attributes:
        phase: the :class:`Phase` the policy runs in.
        routes: route patterns the policy applies to (``"GET /pets/{id}"``), or ``None`` for
            every request.

    Methods:
        flow(request, context): the decision; a generator when it needs I/O; or one
            effect, whose outcome is then the decision (``return effect`` reads as
            ``return (yield effect)``, without a generator).
        bind(settings): called once per middleware with the gateway-wide
            :class:`GatewaySettings`; returns the object to run (usually ``self``).
        on_response(request, context, head): optional; edit the outgoing
            :class:`ResponseHead` (every response, gateway responses included).
        on_request(request, context): optional; called once the route is known, before
            any phase runs (observers start spans and timers here).
        on_complete(request, context): optional; called once the response has been sent
            in full (or the request ended without one); ``context.status``,
            ``context.response_length`` and ``context.integration_latency`` are set.

    Subclass :class:`BasePolicy` rather than implementing this from scratch.
    """

    @property
    def phase(self) -> Phase: ...

    @property
    def routes(self) -> tuple[str, ...] | None: ...

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow | Effect[Any]: ...

    def bind(self, settings: GatewaySettings) -> Policy: ...


class BasePolicy:
    """A convenient base for policies: stores ``routes`` and provides no-op hooks.

    Example, a policy that refuses requests without a tenant header::

        from apigw_mw import BasePolicy, Deny, Phase

        class RequireTenant(BasePolicy):
            phase = Phase.VALIDATE

            def flow(self, request, context):
                if not request.headers.get("x-tenant"):
                    return Deny("BAD_REQUEST_PARAMETERS",
                                "Missing required request parameters: [x-tenant]")
                context.extra["tenant"] = request.headers["x-tenant"]
                return None

        app.add_middleware(GatewayMiddleware, policies=[RequireTenant(routes=["ANY /t/{proxy+}"])])
    """

    phase: ClassVar[Phase] = Phase.VALIDATE
    routes: tuple[str, ...] | None
    #: When set, ``flow`` runs only for requests with one of these methods (``Cors``:
    #: ``{"OPTIONS"}``); the hooks still run for every request the policy applies to.
    flow_methods: ClassVar[frozenset[str] | None] = None
    #: ``True`` when ``flow`` reads the body of most requests: the gateway then reads it just
    #: before the flow runs (after the flows before it), and ``request.body`` holds it.
    reads_body: bool = False

    def __init__(self, *, routes: Iterable[str] | None = None) -> None:
        self.routes = _routes_arg(routes, f"{type(self).__name__}.routes")

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow:
        return None

    def bind(self, settings: GatewaySettings) -> Policy:
        return self

    on_response: Callable[[Request, RequestContext, ResponseHead], None] | None = None
    on_request: Callable[[Request, RequestContext], None] | None = None
    on_complete: Callable[[Request, RequestContext], None] | None = None


def _routes_arg(routes: Iterable[str] | None, field_name: str) -> tuple[str, ...] | None:
    if routes is None:
        return None
    if isinstance(routes, str):
        routes = [routes]
    out = tuple(routes)
    for r in out:
        RoutePattern.parse(r, field_name=field_name)
    return out


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The API's declared routes, and whether requests matching none of them are refused.

    An entry of ``policies``: declare routes that no policy names (so they count as
    matched), and set strict matching::

        policies=[RouteTable(["GET /pets", "GET /pets/{petId}"], strict=True), ...]

    With ``strict=True`` a request that matches no declared route is answered as API Gateway
    does: 403 ``{"message":"Missing Authentication Token"}``.
    """

    routes: Sequence[str] = ()
    strict: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", _routes_arg(self.routes, "RouteTable.routes") or ())


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Gateway-wide settings handed to each policy's ``bind``.

    Attributes:
        stage: the :class:`Stage`.
        storage: the default ``limits`` storage URI for shared state.
        trusted_proxies: the gateway's trusted proxies.
        mode: ``"async"`` (ASGI adapter) or ``"sync"`` (WSGI adapter).
    """

    stage: Stage
    storage: str
    trusted_proxies: TrustedProxies
    mode: str


class _Plan:
    """The policies that apply to one set of matched routes, grouped by phase."""

    __slots__ = (
        "_by_method",
        "complete_hooks",
        "flat",
        "method_bound",
        "observed",
        "offsets",
        "phases",
        "reads_first",
        "request_hooks",
        "response_hooks",
        "simple",
    )

    def __init__(
        self,
        phases: list[list[Any]],
        response_hooks: list[Any],
        request_hooks: list[Any] | None = None,
        complete_hooks: list[Any] | None = None,
        *,
        variant: bool = False,
    ) -> None:
        self.phases = phases
        self.response_hooks = response_hooks
        self.request_hooks = request_hooks or []
        self.complete_hooks = complete_hooks or []
        # Something looks at the response: the adapters time the app and count its bytes.
        self.observed = bool(self.response_hooks or self.complete_hooks)
        # Every flow in order, as (phase, position, policy, last of its phase, and for a
        # flow that reads bodies the _Pending that has the body read before it runs), and
        # where each phase starts in that order: what a run of plain flows steps through.
        self.flat = tuple(
            (
                i,
                j,
                p,
                j == len(ph) - 1,
                _Pending(i, j, p, None, BODY) if getattr(p, "reads_body", False) else None,
            )
            for i, ph in enumerate(phases)
            for j, p in enumerate(ph)
        )
        self.offsets = [0]
        for ph in phases:
            self.offsets.append(self.offsets[-1] + len(ph))
        # The plan's first flow reads bodies: the adapters may read the body before the plan
        # runs (nothing that could refuse the request earlier is skipped).
        self.reads_first = bool(self.flat) and self.flat[0][4] is not None
        # No flow is a generator function: the plan can run without the effect machinery.
        self.simple = not any(
            inspect.isgeneratorfunction(getattr(p, "flow", None)) for ph in phases for p in ph
        )
        # Some flows run only for some methods: ``for_method`` gives the plan without them.
        named: set[str] = set()
        for ph in phases:
            for p in ph:
                methods = getattr(p, "flow_methods", None)
                if methods is not None:
                    named.update(methods)
        self.method_bound = not variant and any(
            getattr(p, "flow_methods", None) is not None for ph in phases for p in ph
        )
        # One variant per method some flow names, and one for every other method: built
        # here, so that no request (whatever method it sends) builds a plan.
        self._by_method: dict[str, _Plan] = {}
        if self.method_bound:
            for method in (*named, ""):
                self._by_method[method] = self._without_flows_for(method)

    def _without_flows_for(self, method: str) -> _Plan:
        phases = [
            kept
            for ph in self.phases
            if (
                kept := [
                    p
                    for p in ph
                    if getattr(p, "flow_methods", None) is None or method in p.flow_methods
                ]
            )
        ]
        return _Plan(
            phases, self.response_hooks, self.request_hooks, self.complete_hooks, variant=True
        )

    def for_method(self, method: str) -> _Plan:
        """This plan without the flows that do not run for ``method``."""
        plan = self._by_method.get(method)
        return self._by_method[""] if plan is None else plan


class Pipeline:
    """Runs bound policies for requests; shared by both adapters."""

    def __init__(
        self,
        policies: Sequence[Any],
        settings: GatewaySettings,
        extra_routes: Sequence[str] = (),
        strict_routes: bool = False,
    ) -> None:
        bound: list[Any] = []
        for i, p in enumerate(policies):
            if not isinstance(getattr(p, "phase", None), int) or not callable(
                getattr(p, "flow", None)
            ):
                raise ConfigurationError(
                    f"policies[{i}]",
                    f"{type(p).__name__} is not a policy (needs a phase and a flow method)",
                )
            b = p.bind(settings) if hasattr(p, "bind") else p
            if _inert(b):
                continue  # an observer with nothing to do (e.g. tracing without an SDK)
            bound.append(b)
        # Stable sort: fixed phase order, list order within a phase.
        bound.sort(key=lambda p: int(p.phase))
        self.policies = bound
        self.strict = strict_routes
        patterns: list[RoutePattern] = [
            RoutePattern.parse(r, field_name="routes") for r in extra_routes
        ]
        for p in bound:
            for r in getattr(p, "routes", None) or ():
                patterns.append(RoutePattern.parse(r, field_name=f"{type(p).__name__}.routes"))
        self.router = Router(patterns)
        self._policy_routes: list[frozenset[int] | None] = []
        for p in bound:
            rs = getattr(p, "routes", None)
            if rs is None:
                self._policy_routes.append(None)
            else:
                self._policy_routes.append(
                    frozenset(self.router.index(RoutePattern.parse(r).key) for r in rs)
                )
        self._plans: dict[frozenset[int], _Plan] = {}
        self.has_routes = bool(self.router.patterns)
        self.empty = not bound and not strict_routes and not self.router.patterns
        # Requests matching no route, with no policy at all, need no plan work.
        self._global_plan = self._plan_for(frozenset())
        self.preflight_plan = self._preflight_plan()

    def match(self, method: str, path: str) -> RouteMatch:
        return self.router.match(method, path)

    def plan(self, match: RouteMatch) -> _Plan:
        plan = self._plans.get(match.matched)
        if plan is None:
            plan = self._plan_for(match.matched)
            if len(self._plans) < 4096:
                self._plans[match.matched] = plan
        return plan

    def _plan_for(self, matched: frozenset[int]) -> _Plan:
        phases: list[list[Any]] = []
        hooks: list[Any] = []
        request_hooks: list[Any] = []
        complete_hooks: list[Any] = []
        current: list[Any] = []
        current_phase = None
        for p, rs in zip(self.policies, self._policy_routes):
            if rs is not None and not (rs & matched):
                continue
            if getattr(p, "on_response", None) is not None:
                hooks.append(p)
            if getattr(p, "on_request", None) is not None:
                request_hooks.append(p)
            if getattr(p, "on_complete", None) is not None:
                complete_hooks.append(p)
            if p.phase == Phase.OBSERVE and type(p).flow is BasePolicy.flow:
                continue  # a pure observer: nothing to decide
            if p.phase != current_phase:
                if current:
                    phases.append(current)
                current, current_phase = [], p.phase
            current.append(p)
        if current:
            phases.append(current)
        return _Plan(phases, hooks, request_hooks, complete_hooks)

    def _preflight_plan(self) -> _Plan | None:
        """Under strict routes, the plan for an ``OPTIONS`` request that matches no route.

        HTTP APIs answer CORS preflights for every route, although no ``OPTIONS`` route is
        declared: the global CORS policies get their say, then the request is refused as
        any unmatched request is.
        """
        glob = self._global_plan
        cors = [p for phase in glob.phases for p in phase if p.phase == Phase.CORS]
        if not self.strict or not cors:
            return None
        return _Plan(
            [cors, [_MissingRoute()]],
            glob.response_hooks,
            glob.request_hooks,
            glob.complete_hooks,
        )

    # -- running a plan ----------------------------------------------------------------------

    def run_sync(self, plan: _Plan, request: Request, ctx: RequestContext) -> Outcome:
        """The plan's outcome, performing effects with blocking calls (WSGI)."""
        if not plan.simple or ctx.policy_trace is not None:
            return drive_sync(self.flow(plan, request, ctx))
        outcome = _run_simple(plan, request, ctx, 0, 0)
        if type(outcome) is not _Pending:
            return outcome  # type: ignore[return-value]
        fast = _Fast(plan, request, ctx)
        kind, x = fast.begin(outcome)
        value: Any
        while kind == "perform":
            try:
                if type(x) is ReadBody:
                    value, error = x.run_sync(), False
                else:
                    value = x.batcher.run_many_sync([x])[0]
                    error = isinstance(value, BaseException)
            except BodyTooLarge:
                return fast.too_large()
            except ClientDisconnect:
                raise
            except Exception as exc:
                value, error = exc, True
            kind, x = fast.resume(value, error)
        return drive_sync(x) if kind == "machinery" else x

    async def run_async(self, plan: _Plan, request: Request, ctx: RequestContext) -> Outcome:
        """The plan's outcome, awaiting effects (ASGI)."""
        if not plan.simple or ctx.policy_trace is not None:
            return await drive_async(self.flow(plan, request, ctx))
        outcome = _run_simple(plan, request, ctx, 0, 0)
        if type(outcome) is not _Pending:
            return outcome  # type: ignore[return-value]
        return await self.finish_async(plan, request, ctx, outcome)

    def start(self, plan: _Plan, request: Request, ctx: RequestContext) -> Outcome | _Pending:
        """Run as much of the plan as needs no awaiting: its outcome, or a :class:`_Pending`
        for :meth:`finish_async`. Saves a coroutine when every flow is plain."""
        if not plan.simple or ctx.policy_trace is not None:
            return _Pending(-1, 0, None, None)
        return _run_simple(plan, request, ctx, 0, 0)

    def resume(
        self,
        plan: _Plan,
        request: Request,
        ctx: RequestContext,
        pending: _Pending,
        value: Any,
        error: bool = False,
    ) -> Outcome | _Pending:
        """Hand ``value`` (or raise it, with ``error``) to the flow waiting in ``pending``
        and run on as far as no awaiting is needed, as :meth:`start` does."""
        if pending.effect is BODY:  # the body, read for the flow about to run
            return _after_body(plan, request, ctx, pending, value, error)
        alone = pending.position == len(plan.phases[pending.phase]) - 1
        state, x = _step(pending.policy, pending.gen, value, error, alone)
        if state == "effect":
            pending.effect = x
            return pending
        decision = _terminal(x, ctx, pending.policy)
        if decision is not None:
            return decision
        if pending.phase == len(plan.phases) - 1 and alone:
            return None  # that flow was the plan's last
        return _run_simple(plan, request, ctx, pending.phase, pending.position + 1)

    @staticmethod
    def too_large(pending: _Pending) -> Outcome:
        """The answer when the body a flow waits for is over the limit."""
        if pending.gen is not None:
            pending.gen.close()
        return _BODY_TOO_LARGE

    async def finish_async(
        self, plan: _Plan, request: Request, ctx: RequestContext, outcome: _Pending
    ) -> Outcome:
        """The rest of a plan that :meth:`start` could not finish."""
        if outcome.phase < 0:
            return await drive_async(self.flow(plan, request, ctx))
        fast = _Fast(plan, request, ctx)
        kind, x = fast.begin(outcome)
        value: Any
        while kind == "perform":
            try:
                if type(x) is ReadBody:
                    value, error = await x.run_async(), False
                elif getattr(x.batcher, "inline", False):
                    value = x.batcher.run_many_sync([x])[0]
                    error = isinstance(value, BaseException)
                else:
                    value = (await x.batcher.run_many_async([x]))[0]
                    error = isinstance(value, BaseException)
            except BodyTooLarge:
                return fast.too_large()
            except ClientDisconnect:
                raise
            except Exception as exc:
                value, error = exc, True
            kind, x = fast.resume(value, error)
        return await drive_async(x) if kind == "machinery" else x

    # -- the flow both drivers run ----------------------------------------------------------

    def flow(
        self, plan: _Plan, request: Request, ctx: RequestContext
    ) -> Generator[list[Any], list[Any], Outcome]:
        """Run every phase; yields batches of effects, receives their outcomes."""
        for phase in plan.phases:
            decision = yield from _run_phase(phase, request, ctx)
            if decision is not None:
                return decision
        return None


class _Body:
    """The effect of a :class:`_Pending` that waits for the body before a flow runs."""

    def __repr__(self) -> str:
        return "BODY"


BODY: Final = _Body()


class _Pending:
    """A plain flow returned a generator that yielded ``effect``, which cannot be performed
    on the spot: the rest of the plan waits for it. (``phase`` -1: the plan needs the batch
    machinery from the start. ``effect`` :data:`BODY`: the body is to be read for the flow
    at ``(phase, position)``, which has not run yet; such a _Pending is built once, with the
    plan, and shared.)"""

    __slots__ = ("effect", "gen", "phase", "policy", "position")

    def __init__(
        self, phase: int, position: int, policy: Any, gen: Any, effect: Any = None
    ) -> None:
        self.phase = phase
        self.position = position
        self.policy = policy
        self.gen = gen
        self.effect = effect


#: What an adapter hands :meth:`Pipeline.resume`, with the body, when it has read the body
#: before a plan whose first flow reads bodies (``_Plan.reads_first``): run from the start.
BODY_FIRST = _Pending(0, 0, None, None, BODY)


class _Fast:
    """A plan of plain flows, one of which turned out to be a generator: the logic both
    drivers share. It says what to do next: ``("perform", effect)`` for the driver to perform
    (a body read, or the effect of the last flow of its phase, which nothing is left to
    batch with), ``("machinery", flow)`` for the batch machinery to finish, or
    ``("done", outcome)``."""

    __slots__ = ("ctx", "pending", "plan", "request")

    def __init__(self, plan: _Plan, request: Request, ctx: RequestContext) -> None:
        self.plan = plan
        self.request = request
        self.ctx = ctx
        self.pending: _Pending

    def begin(self, pending: _Pending) -> tuple[str, Any]:
        self.pending = pending
        if pending.effect is BODY:  # the body, for the flow about to run
            return "perform", ReadBody(self.request)
        return self._after("effect", pending.effect)

    def resume(self, value: Any, error: bool) -> tuple[str, Any]:
        p = self.pending
        if p.effect is BODY:  # the body, read for the flow about to run
            outcome = _after_body(self.plan, self.request, self.ctx, p, value, error)
            if type(outcome) is not _Pending:
                return "done", outcome
            return self.begin(outcome)
        alone = p.position == len(self.plan.phases[p.phase]) - 1
        return self._after(*_step(p.policy, p.gen, value, error, alone))

    def too_large(self) -> Outcome:
        return Pipeline.too_large(self.pending)

    def _after(self, state: str, x: Any) -> tuple[str, Any]:
        p = self.pending
        plan = self.plan
        if state == "effect":
            if type(x) is ReadBody or (
                p.position == len(plan.phases[p.phase]) - 1
                and getattr(x, "batcher", None) is not None
            ):
                return "perform", x
            return "machinery", _resume(p, x, plan, self.request, self.ctx)
        decision = _terminal(x, self.ctx, p.policy)
        if decision is not None:
            return "done", decision
        outcome = _run_simple(plan, self.request, self.ctx, p.phase, p.position + 1)
        if type(outcome) is not _Pending:
            return "done", outcome
        return self.begin(outcome)


def _after_body(
    plan: _Plan, request: Request, ctx: RequestContext, pending: _Pending, value: Any, error: bool
) -> Outcome | _Pending:
    """Run on from the flow the body was read for (``request.body`` holds it now)."""
    if error:
        return _policy_failed(pending.policy, value)
    if request._body is None:
        request._set_body(value)
    return _run_simple(plan, request, ctx, pending.phase, pending.position)


def _run_simple(
    plan: _Plan, request: Request, ctx: RequestContext, phase: int, position: int
) -> Outcome | _Pending:
    """Run a plan of plain flows from ``(phase, position)``: no generators, no batches."""
    flat = plan.flat
    if phase or position:
        flat = flat[plan.offsets[phase] + position :]
    for i, j, policy, last, body_first in flat:
        if body_first is not None and request._body is None:
            # The flow reads bodies (``reads_body``): the body first, then the flow, which
            # finds it in ``request.body``.
            return body_first
        try:
            result = policy.flow(request, ctx)
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            return _policy_failed(policy, exc)
        if result is None:
            continue
        kind = type(result)
        outcome: Outcome | _Pending
        if kind is Allow:  # an authorizer's answer: _terminal's case, looked for first
            outcome = _allow(ctx, result, policy)
        elif kind is GeneratorType:
            outcome = _begin_flow(i, j, policy, result, ctx, last)
        elif last and getattr(getattr(result, "batcher", None), "inline", False):
            # A returned effect alone in its phase on a batcher that never blocks (a
            # throttle on memory): _begin_effect's first case, without probing for the rest.
            outcome = _perform_alone(policy, result, result.batcher, ctx)
        elif _is_effect(result):
            outcome = _begin_effect(i, j, policy, result, ctx, last)
        else:
            outcome = _terminal(result, ctx, policy)
        if outcome is not None:
            return outcome
    return None


_DECISIONS = (Deny, Allow, Respond)


def _is_effect(result: Any) -> bool:
    """Whether a flow returned an effect (rather than a decision, or something wrong, which
    :func:`_terminal` answers)."""
    return not isinstance(result, _DECISIONS) and hasattr(result, "run_sync")


def _yielding(effect: Any) -> Generator[Any, Any, Any]:
    """The flow a flow that returned ``effect`` stands for: ``return (yield effect)``."""
    return (yield effect)


def _begin_effect(
    i: int, j: int, policy: Any, effect: Any, ctx: RequestContext, alone: bool
) -> Outcome | _Pending:
    """A flow returned an effect, whose outcome is its decision: decided on the spot when
    the effect can be performed there, else a :class:`_Pending`."""
    if alone:
        batcher = getattr(effect, "batcher", None)
        if batcher is not None and getattr(batcher, "inline", False):
            return _perform_alone(policy, effect, batcher, ctx)
    here = _on_the_spot(effect, alone)
    if here is None:
        gen = _yielding(effect)
        next(gen)
        return _Pending(i, j, policy, gen, effect)
    value, is_error = here
    if is_error:
        return _policy_failed(policy, value)
    return _terminal(value, ctx, policy)


def _perform_alone(policy: Any, effect: Any, batcher: Any, ctx: RequestContext) -> Outcome:
    """The decision of a returned effect that nothing is left to batch with, performed here
    by its batcher, which never blocks."""
    try:
        value = batcher.run_many_sync([effect])[0]
    except (ClientDisconnect, BodyTooLarge):
        raise
    except Exception as exc:
        return _policy_failed(policy, exc)
    if value is None:
        return None
    if isinstance(value, BaseException):
        return _policy_failed(policy, value)
    return _terminal(value, ctx, policy)


def _begin_flow(
    i: int, j: int, policy: Any, gen: Any, ctx: RequestContext, alone: bool
) -> Outcome | _Pending:
    """Start a flow's generator and run it past the effects performed on the spot: its
    decision, or a :class:`_Pending` for the first effect that needs performing."""
    state, x = _step(policy, gen, None, False, alone)
    if state == "effect":
        return _Pending(i, j, policy, gen, x)
    return _terminal(x, ctx, policy)


def _step(
    policy: Any, gen: Any, value: Any, is_error: bool, alone: bool = False
) -> tuple[str, Any]:
    """Advance a flow past its inline effects: ``("effect", e)`` or ``("done", decision)``.

    ``alone``: the flow is the last of its phase, so its batched effects have nothing left
    to be batched with; those whose batcher does not block are performed on the spot too.
    """
    while True:
        try:
            effect = gen.throw(value) if is_error else gen.send(value)
        except StopIteration as stop:
            return "done", stop.value
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            return "done", _policy_failed(policy, exc)
        here = _on_the_spot(effect, alone)
        if here is None:
            return "effect", effect
        value, is_error = here


def _on_the_spot(effect: Any, alone: bool) -> tuple[Any, bool] | None:
    """Perform ``effect`` now if that cannot block: ``(value, is_error)``, else ``None``.

    A body read once the body is buffered, an effect that promises to be ``inline``, and,
    when the flow is the last of its phase (``alone``: nothing is left to batch it with), a
    batched effect whose batcher does not block.
    """
    if type(effect) is ReadBody:
        # The most common effect, answered without looking its attributes up.
        body = effect.request._body
        return None if body is None else (body, False)
    batcher = getattr(effect, "batcher", None)
    try:
        if batcher is None:
            if not getattr(effect, "inline", False):
                return None
            return effect.run_sync(), False
        if alone and getattr(batcher, "inline", False):
            value = batcher.run_many_sync([effect])[0]
            return value, isinstance(value, BaseException)
    except (ClientDisconnect, BodyTooLarge):
        raise
    except Exception as exc:
        return exc, True
    return None


def _resume(
    pending: _Pending, effect: Any, plan: _Plan, request: Request, ctx: RequestContext
) -> Generator[list[Any], list[Any], Outcome]:
    """Finish a plan from a flow that has just yielded ``effect``."""
    rest = plan.phases[pending.phase][pending.position :]
    decision = yield from _run_phase(rest, request, ctx, (pending.gen, effect))
    if decision is not None:
        return decision
    for phase in plan.phases[pending.phase + 1 :]:
        decision = yield from _run_phase(phase, request, ctx)
        if decision is not None:
            return decision
    return None


class _MissingRoute:
    """Refuses a request that matches no declared route (strict routes)."""

    phase = Phase.CORS
    routes = None

    def flow(self, request: Request, context: RequestContext) -> Decision:
        return _MISSING_ROUTE


def _inert(policy: Any) -> bool:
    """An observer on every route with no flow of its own and no hook: it does nothing."""
    return (
        policy.phase == Phase.OBSERVE
        and getattr(type(policy), "flow", None) is BasePolicy.flow
        and getattr(policy, "routes", None) is None
        and all(
            getattr(policy, hook, None) is None
            for hook in ("on_request", "on_response", "on_complete")
        )
    )


_IDENTITY_FIELDS = frozenset(attr for attr, _ in Identity._FIELDS)


def _merge(ctx: RequestContext, allow: Allow) -> None:
    if allow.authorizer:
        ctx.authorizer.update(allow.authorizer)
    if allow.identity:
        identity = ctx.identity
        for key, value in allow.identity.items():
            if key not in _IDENTITY_FIELDS:
                raise AttributeError(f"Identity has no field {key!r}")
            setattr(identity, key, value)


def _allow(ctx: RequestContext, allow: Allow, policy: Any) -> Outcome:
    """Merge an :class:`Allow` into the context: ``None``, or 500 if it cannot be merged."""
    try:
        _merge(ctx, allow)
    except Exception as exc:  # e.g. an identity attribute that does not exist
        return _policy_failed(policy, exc)
    return None


def _terminal(decision: Any, ctx: RequestContext, policy: Any = None) -> Outcome:
    """``decision`` if it ends the request; merges an Allow and returns None otherwise."""
    if decision is None:
        return None
    if isinstance(decision, (Deny, Respond)):
        return decision
    if isinstance(decision, Allow):
        return _allow(ctx, decision, policy)
    logger.error(
        "policy %s returned %r, not a decision; answering 500 API_CONFIGURATION_ERROR",
        type(policy).__name__,
        type(decision).__name__,
    )
    return _CONFIG_ERROR


def _policy_failed(policy: Any, exc: BaseException) -> Deny:
    if isinstance(exc, GatewayError):
        try:
            if exc.message is None:  # the type's default message
                return Deny(exc.response_type, headers=exc.headers)
            return Deny(exc.response_type, exc.message, headers=exc.headers)
        except ConfigurationError as bad:
            exc = bad
    logger.error(
        "policy %s failed; answering 500 API_CONFIGURATION_ERROR",
        type(policy).__name__,
        exc_info=exc,
    )
    return _CONFIG_ERROR


class _Suspended:
    __slots__ = ("effect", "gen", "policy", "started")

    def __init__(
        self, policy: Any, gen: Generator[Any, Any, Any], effect: Any, started: int
    ) -> None:
        self.policy = policy
        self.gen = gen
        self.effect = effect
        self.started = started


def _advance(
    policy: Any, gen: Generator[Any, Any, Any], value: Any, is_error: bool
) -> Generator[list[Any], list[Any], tuple[Any, Any]]:
    """Step one flow until it yields a batchable effect (returns ``("wait", effect)``) or
    finishes (returns ``("done", decision)``). Unbatchable effects are performed on the way,
    one batch of one each."""
    while True:
        try:
            effect = gen.throw(value) if is_error else gen.send(value)
        except StopIteration as stop:
            return "done", stop.value
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            return "done", _policy_failed(policy, exc)
        if getattr(effect, "batcher", None) is not None:
            return "wait", effect
        if getattr(effect, "inline", False):
            # Non-blocking by its own promise: performed here, without a driver round trip.
            try:
                value, is_error = effect.run_sync(), False
            except (ClientDisconnect, BodyTooLarge):
                raise
            except Exception as exc:
                value, is_error = exc, True
            continue
        outcome = (yield [effect])[0]
        value, is_error = outcome, isinstance(outcome, BaseException)


def _from_effect(
    policy: Any, gen: Generator[Any, Any, Any], effect: Any
) -> Generator[list[Any], list[Any], tuple[Any, Any]]:
    """Like :func:`_advance`, for a flow that has already yielded ``effect``."""
    if getattr(effect, "batcher", None) is not None:
        return "wait", effect
    if getattr(effect, "inline", False):
        try:
            value, is_error = effect.run_sync(), False
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            value, is_error = exc, True
    else:
        value = (yield [effect])[0]
        is_error = isinstance(value, BaseException)
    return (yield from _advance(policy, gen, value, is_error))


def _record(ctx: RequestContext, policy: Any, started: int, outcome: Any) -> None:
    trace = ctx.policy_trace
    if trace is not None:
        trace.append((policy, started, perf_counter_ns(), outcome))


def _run_phase(
    policies: list[Any],
    request: Request,
    ctx: RequestContext,
    first: tuple[Any, Any] | None = None,
) -> Generator[list[Any], list[Any], Outcome]:
    """Run one phase. ``first``, when given, is ``(flow, effect)``: the first policy's flow,
    already started, and the effect it has just yielded."""
    waiting: list[_Suspended] = []
    tracing = ctx.policy_trace is not None
    for policy in policies:
        started = perf_counter_ns() if tracing else 0
        if first is not None:
            gen, effect = first
            first = None
            state, value = yield from _from_effect(policy, gen, effect)
            if state == "wait":
                waiting.append(_Suspended(policy, gen, value, started))
                continue
            decision = _terminal(value, ctx, policy)
            if tracing:
                _record(ctx, policy, started, decision)
            if decision is not None:
                _close(waiting)
                return decision
            continue
        else:
            if request._body is None and getattr(policy, "reads_body", False):
                # The flow reads bodies: the body first, which ``request.body`` then holds.
                read = (yield [ReadBody(request)])[0]
                if isinstance(read, BaseException):
                    _close(waiting)
                    return _policy_failed(policy, read)
            try:
                result = policy.flow(request, ctx)
            except (ClientDisconnect, BodyTooLarge):
                raise
            except Exception as exc:
                _close(waiting)
                return _policy_failed(policy, exc)
        if type(result) is not GeneratorType and not _is_effect(result):
            decision = _terminal(result, ctx, policy)
            if tracing:
                _record(ctx, policy, started, decision)
            if decision is not None:
                _close(waiting)
                return decision
            continue
        if type(result) is not GeneratorType:
            result = _yielding(result)  # a flow that returned an effect
        state, value = yield from _advance(policy, result, None, False)
        if state == "wait":
            waiting.append(_Suspended(policy, result, value, started))
            continue
        decision = _terminal(value, ctx, policy)
        if tracing:
            _record(ctx, policy, started, decision)
        if decision is not None:
            _close(waiting)
            return decision
    while waiting:
        effects = [s.effect for s in waiting]
        if all(getattr(e.batcher, "inline", False) for e in effects):
            outcomes = perform_sync(effects)  # in-memory batchers: no driver round trip
        else:
            outcomes = yield effects
        still: list[_Suspended] = []
        for i, (s, outcome) in enumerate(zip(waiting, outcomes)):
            state, value = yield from _advance(
                s.policy, s.gen, outcome, isinstance(outcome, BaseException)
            )
            if state == "wait":
                s.effect = value
                still.append(s)
                continue
            decision = _terminal(value, ctx, s.policy)
            if tracing:
                _record(ctx, s.policy, s.started, decision)
            if decision is not None:
                _close(still)
                _close(waiting[i + 1 :])
                return decision
        waiting = still
    return None


def _close(suspended: Iterable[_Suspended]) -> None:
    for s in suspended:
        s.gen.close()


class ClientDisconnect(Exception):
    """The client went away while the gateway was reading the body."""


class BodyTooLarge(Exception):
    """The body grew past ``max_body_size`` while it was read."""


# -- drivers -------------------------------------------------------------------------------


def _group(batch: list[Any]) -> list[tuple[Any, list[int]]]:
    groups: dict[int, tuple[Any, list[int]]] = {}
    order: list[tuple[Any, list[int]]] = []
    for i, effect in enumerate(batch):
        batcher = getattr(effect, "batcher", None)
        if batcher is None:
            order.append((None, [i]))
            continue
        entry = groups.get(id(batcher))
        if entry is None:
            entry = groups[id(batcher)] = (batcher, [])
            order.append(entry)
        entry[1].append(i)
    return order


def perform_sync(batch: list[Any]) -> list[Any]:
    """Perform a batch of effects, blocking; exceptions become outcomes."""
    if len(batch) == 1:
        effect = batch[0]
        batcher = getattr(effect, "batcher", None)
        try:
            if batcher is None:
                return [effect.run_sync()]
            return list(batcher.run_many_sync(batch))
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            return [exc]
    outcomes: list[Any] = [None] * len(batch)
    for batcher, idx in _group(batch):
        try:
            if batcher is None:
                outcomes[idx[0]] = batch[idx[0]].run_sync()
            else:
                results = batcher.run_many_sync([batch[i] for i in idx])
                for i, r in zip(idx, results):
                    outcomes[i] = r
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            for i in idx:
                outcomes[i] = exc
    return outcomes


async def perform_async(batch: list[Any]) -> list[Any]:
    """Perform a batch of effects on the event loop; exceptions become outcomes."""
    if len(batch) == 1:
        effect = batch[0]
        batcher = getattr(effect, "batcher", None)
        try:
            if batcher is None:
                return [await effect.run_async()]
            return list(await batcher.run_many_async(batch))
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            return [exc]
    outcomes: list[Any] = [None] * len(batch)
    for batcher, idx in _group(batch):
        try:
            if batcher is None:
                outcomes[idx[0]] = await batch[idx[0]].run_async()
            else:
                results = await batcher.run_many_async([batch[i] for i in idx])
                for i, r in zip(idx, results):
                    outcomes[i] = r
        except (ClientDisconnect, BodyTooLarge):
            raise
        except Exception as exc:
            for i in idx:
                outcomes[i] = exc
    return outcomes


def drive_sync(flow: Generator[list[Any], list[Any], Outcome]) -> Outcome:
    """Run a pipeline flow to its decision, performing effects with blocking calls."""
    try:
        batch = next(flow)
        while True:
            batch = flow.send(perform_sync(batch))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except BodyTooLarge:
        flow.close()
        return Deny("REQUEST_TOO_LARGE")


async def drive_async(flow: Generator[list[Any], list[Any], Outcome]) -> Outcome:
    """Run a pipeline flow to its decision, awaiting effects."""
    try:
        batch = next(flow)
        while True:
            batch = flow.send(await perform_async(batch))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except BodyTooLarge:
        flow.close()
        return Deny("REQUEST_TOO_LARGE")
