"""The pipeline: phase order, decisions, failures, effects and their batching."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from apigw_mw import (
    Allow,
    BasePolicy,
    Call,
    ConfigurationError,
    Deny,
    EffectTimeout,
    GatewayError,
    Phase,
    Respond,
)
from tests.core.policies import Refuse, Tag

# -- order ---------------------------------------------------------------------------------


def test_phases_run_in_fixed_order_whatever_the_list_order(make_client):
    log: list[str] = []
    policies = [
        Tag("cache", Phase.CACHE, log=log),
        Tag("validate", Phase.VALIDATE, log=log),
        Tag("key", Phase.API_KEY, log=log),
        Tag("auth", Phase.AUTHORIZE, log=log),
        Tag("throttle", Phase.THROTTLE, log=log),
        Tag("mtls", Phase.MTLS, log=log),
        Tag("ip", Phase.RESOURCE_POLICY, log=log),
        Tag("cors", Phase.CORS, log=log),
    ]
    r = make_client(policies).get("/x")
    assert r.status_code == 200
    assert log == ["cors", "ip", "mtls", "throttle", "auth", "key", "validate", "cache"]


def test_list_order_within_a_phase(make_client):
    log: list[str] = []
    policies = [
        Tag("a2", Phase.AUTHORIZE, log=log),
        Tag("v1", Phase.VALIDATE, log=log),
        Tag("a1", Phase.AUTHORIZE, log=log),
        Tag("v2", Phase.VALIDATE, log=log),
    ]
    make_client(policies).get("/x")
    assert log == ["a2", "a1", "v1", "v2"]


@pytest.mark.parametrize(
    ("policies", "status", "ran"),
    [
        pytest.param(
            [Refuse("THROTTLED", Phase.THROTTLE), Refuse("UNAUTHORIZED", Phase.AUTHORIZE)],
            429,
            ["refuse:THROTTLED"],
            id="earlier-phase-wins",
        ),
        pytest.param(
            [Refuse("UNAUTHORIZED", Phase.AUTHORIZE), Refuse("THROTTLED", Phase.THROTTLE)],
            429,
            ["refuse:THROTTLED"],
            id="earlier-phase-wins-listed-last",
        ),
        pytest.param(
            [Refuse("INVALID_API_KEY", Phase.API_KEY), Refuse("QUOTA_EXCEEDED", Phase.API_KEY)],
            403,
            ["refuse:INVALID_API_KEY"],
            id="list-order-within-phase",
        ),
    ],
)
def test_first_denial_wins_and_stops_the_chain(make_client, policies, status, ran):
    log: list[str] = []
    for p in policies:
        p.log = log
    r = make_client(policies).get("/x")
    assert r.status_code == status
    assert log == ran
    assert r.seen == []


def test_allows_merge_identity_and_authorizer_output(make_client):
    class Who(BasePolicy):
        phase = Phase.AUTHORIZE

        def flow(self, request: Any, context: Any) -> Any:
            return Allow(authorizer={"principalId": "u1", "scope": "a"}, identity={"user": "u1"})

    class Key(BasePolicy):
        phase = Phase.API_KEY

        def flow(self, request: Any, context: Any) -> Any:
            assert context.authorizer["principalId"] == "u1"  # earlier output is visible
            return Allow(authorizer={"scope": "b"}, identity={"api_key_id": "k1"})

    r = make_client([Key(), Who()]).get("/x")
    ctx = r.json()["context"]
    assert ctx["authorizer"] == {"principalId": "u1", "scope": "b"}
    assert ctx["apiKeyId"] == "k1"
    assert r.seen[0].context.identity.user == "u1"


def test_respond_answers_without_calling_the_app(make_client):
    class Cached(BasePolicy):
        phase = Phase.CACHE

        def flow(self, request: Any, context: Any) -> Any:
            return Respond(200, [(b"content-type", b"text/plain")], b"from cache")

    r = make_client([Cached()]).get("/x")
    assert (r.status_code, r.content) == (200, b"from cache")
    assert r.headers["x-amzn-requestid"]
    assert r.seen == []


# -- failures ------------------------------------------------------------------------------


class Boom(BasePolicy):
    phase = Phase.AUTHORIZE

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def flow(self, request: Any, context: Any) -> Any:
        if self.where == "call":
            raise RuntimeError("plain function failed")
        if self.where == "decision":
            return "yes"  # not a decision
        if self.where == "unknown-response-type":
            raise GatewayError("NOT_A_TYPE")
        if self.where == "unknown-identity-field":
            return Allow(identity={"shoe_size": 42})
        return self._gen()

    def _gen(self) -> Any:
        yield Call(lambda: 1, blocking=False)
        if self.where == "generator":
            raise KeyError("after an effect")
        return None


@pytest.mark.parametrize(
    "where",
    ["call", "generator", "decision", "unknown-response-type", "unknown-identity-field"],
)
def test_a_failing_policy_answers_500_and_nothing_reaches_the_app(make_client, caplog, where):
    with caplog.at_level(logging.ERROR, logger="apigw_mw"):
        r = make_client([Boom(where)]).get("/x")
    assert r.status_code == 500
    assert r.json() == {"message": "Internal server error"}
    assert r.headers["x-amzn-errortype"] == "InternalServerErrorException"
    assert r.seen == []
    assert any("Boom" in rec.getMessage() for rec in caplog.records)  # logged once, loudly


@pytest.mark.parametrize(
    ("error", "status", "body", "header"),
    [
        pytest.param(
            GatewayError("UNAUTHORIZED"), 401, {"message": "Unauthorized"}, None, id="type"
        ),
        pytest.param(
            GatewayError("THROTTLED", "Slow down", headers={"Retry-After": "3"}),
            429,
            {"message": "Slow down"},
            ("retry-after", "3"),
            id="message-and-headers",
        ),
    ],
)
@pytest.mark.parametrize("in_generator", [False, True], ids=["plain", "generator"])
def test_gateway_error_raised_in_a_flow(
    make_client, caplog, error, status, body, header, in_generator
):
    class Raises(BasePolicy):
        phase = Phase.AUTHORIZE

        def flow(self, request: Any, context: Any) -> Any:
            if not in_generator:
                raise error
            return self._gen()

        def _gen(self) -> Any:
            yield Call(lambda: None, blocking=False)
            raise error

    r = make_client([Raises()]).get("/x")
    assert r.status_code == status
    assert r.json() == body
    if header:
        assert r.headers[header[0]] == header[1]
    assert r.seen == []
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_deny_with_unknown_type_is_a_configuration_error():
    with pytest.raises(ConfigurationError) as err:
        Deny("NOT_A_TYPE")
    assert err.value.field == "response_type"


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(object(), id="object"),
        pytest.param("Cors", id="string"),
        pytest.param([Tag("x")], id="nested-list"),
    ],
)
def test_non_policies_in_the_list_are_configuration_errors(adapter, entry):
    from tests.helpers import GatewayClient

    with pytest.raises(ConfigurationError) as err:
        GatewayClient(adapter, [Tag("ok"), entry])
    assert err.value.field == "policies[1]"


# -- effects -------------------------------------------------------------------------------


def _blocking_double(x: int) -> int:
    return 2 * x


async def _async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def _fails() -> None:
    raise LookupError("no such tenant")


class Effects(BasePolicy):
    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> Any:
        a = yield Call(_blocking_double, 2)
        b = yield Call(_async_double, 5)
        c = yield Call(_blocking_double, 1, blocking=False)
        try:
            yield Call(_fails)
        except LookupError as exc:
            d = str(exc)
        try:
            yield Call(asyncio.sleep, 5, timeout=0.05)
        except EffectTimeout:
            e = "timeout"
        return Allow(authorizer={"results": [a, b, c, d, e]})


def test_effects_results_and_errors_are_sent_back_into_the_flow(make_client):
    r = make_client([Effects()]).get("/x")
    assert r.status_code == 200
    assert r.json()["context"]["authorizer"]["results"] == [4, 10, 2, "no such tenant", "timeout"]


def test_blocking_call_with_timeout_is_abandoned(make_client):
    import time

    class Slow(BasePolicy):
        phase = Phase.AUTHORIZE

        def flow(self, request: Any, context: Any) -> Any:
            try:
                yield Call(time.sleep, 0.5, timeout=0.05)
            except EffectTimeout:
                return Deny("AUTHORIZER_FAILURE")
            return None

    client = make_client([Slow()])
    started = time.perf_counter()
    r = client.get("/x")
    assert r.status_code == 500
    assert r.json() == {"message": None}
    if client.kind == "wsgi":
        # Under ASGI the test's event loop joins the abandoned thread when it closes.
        assert time.perf_counter() - started < 0.4


class Counter:
    """A test batcher: adds ``n`` to named counters, one "round trip" per batch."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.batches: list[list[str]] = []

    def _apply(self, effects: list[Any]) -> list[Any]:
        self.batches.append([e.key for e in effects])
        out: list[Any] = []
        for e in effects:
            if e.key == "broken":
                out.append(ConnectionError("storage down"))
                continue
            self.counts[e.key] = self.counts.get(e.key, 0) + 1
            out.append(self.counts[e.key])
        return out

    def run_many_sync(self, effects: list[Any]) -> list[Any]:
        return self._apply(effects)

    async def run_many_async(self, effects: list[Any]) -> list[Any]:
        await asyncio.sleep(0)
        return self._apply(effects)


class Hit:
    def __init__(self, batcher: Counter, key: str) -> None:
        self.batcher = batcher
        self.key = key

    def run_sync(self) -> Any:  # pragma: no cover - batched effects go through the batcher
        raise AssertionError("performed alone")

    async def run_async(self) -> Any:  # pragma: no cover
        raise AssertionError("performed alone")


class Limit(BasePolicy):
    phase = Phase.THROTTLE

    def __init__(self, batcher: Counter, key: str, limit: int, hits: int = 1) -> None:
        super().__init__()
        self.batcher, self.key, self.limit, self.hits = batcher, key, limit, hits

    def flow(self, request: Any, context: Any) -> Any:
        for _ in range(self.hits):
            try:
                count = yield Hit(self.batcher, self.key)
            except ConnectionError:
                return Deny("THROTTLED", "storage down")
        if count > self.limit:
            return Deny("THROTTLED")
        return Allow(authorizer={self.key: count})


def test_effects_sharing_a_batcher_are_performed_together(make_client):
    counter, other = Counter(), Counter()
    policies = [
        Limit(counter, "stage", 10),
        Limit(other, "ip", 10),
        Limit(counter, "route", 10),
        Limit(counter, "twice", 10, hits=2),
    ]
    r = make_client(policies).get("/x")
    assert r.status_code == 200
    # One round trip per batcher for the first step; the second hit goes alone.
    assert counter.batches == [["stage", "route", "twice"], ["twice"]]
    assert other.batches == [["ip"]]
    assert r.json()["context"]["authorizer"] == {"stage": 1, "ip": 1, "route": 1, "twice": 2}


def test_batched_denial_and_per_effect_errors(make_client):
    counter = Counter()
    client = make_client([Limit(counter, "a", 1), Limit(counter, "b", 5)])
    assert client.get("/x").status_code == 200
    r = client.get("/x")
    assert r.status_code == 429
    assert r.json() == {"message": "Too Many Requests"}
    assert r.seen == []

    broken = Counter()
    r = make_client([Limit(broken, "broken", 1), Limit(broken, "ok", 1)]).get("/x")
    assert r.status_code == 429
    assert r.json() == {"message": "storage down"}


def test_a_batcher_that_raises_fails_every_effect_of_its_batch(make_client, caplog):
    class Down(Counter):
        def _apply(self, effects: list[Any]) -> list[Any]:
            raise ConnectionError("down")

    down = Down()
    r = make_client([Limit(down, "a", 1), Limit(down, "b", 1)]).get("/x")
    assert r.status_code == 429
    assert r.json() == {"message": "storage down"}


# -- flows that return an effect ------------------------------------------------------------


class Verdict:
    """A batched effect whose outcome is a decision: a Deny once its key passed ``limit``."""

    def __init__(self, batcher: Any, key: str, limit: int) -> None:
        self.batcher, self.key, self.limit = batcher, key, limit

    def run_sync(self) -> Any:  # pragma: no cover - batched effects go through the batcher
        raise AssertionError("performed alone")

    async def run_async(self) -> Any:  # pragma: no cover
        raise AssertionError("performed alone")


class Verdicts(Counter):
    """Counts like :class:`Counter` and answers each effect with its decision."""

    def __init__(self, *, inline: bool) -> None:
        super().__init__()
        self.inline = inline

    def _apply(self, effects: list[Any]) -> list[Any]:
        counts = super()._apply(effects)
        return [
            c if isinstance(c, BaseException) else (Deny("THROTTLED") if c > e.limit else None)
            for c, e in zip(counts, effects)
        ]


class Returns(BasePolicy):
    """``return effect``: no generator."""

    phase = Phase.THROTTLE

    def __init__(self, effect: Any, phase: Phase = Phase.THROTTLE) -> None:
        super().__init__()
        self.effect = effect
        self.phase = phase  # type: ignore[misc]

    def flow(self, request: Any, context: Any) -> Any:
        return self.effect


class Yields(Returns):
    """The same, as a generator: ``return (yield effect)``."""

    def flow(self, request: Any, context: Any) -> Any:
        return (yield self.effect)


@pytest.mark.parametrize("inline", [True, False], ids=["inline batcher", "awaited batcher"])
def test_a_returned_effect_decides_like_a_yielded_one(make_client, inline):
    verdicts = Verdicts(inline=inline)
    client = make_client([Returns(Verdict(verdicts, "stage", 2))])
    assert [client.get("/x").status_code for _ in range(3)] == [200, 200, 429]
    r = client.get("/x")
    assert r.json() == {"message": "Too Many Requests"}
    assert r.seen == []
    assert verdicts.batches == [["stage"]] * 4


@pytest.mark.parametrize("inline", [True, False], ids=["inline batcher", "awaited batcher"])
def test_returned_and_yielded_effects_of_a_phase_share_one_batch(make_client, inline):
    verdicts = Verdicts(inline=inline)
    policies = [Returns(Verdict(verdicts, "stage", 1)), Yields(Verdict(verdicts, "route", 10))]
    client = make_client(policies)
    assert client.get("/x").status_code == 200
    r = client.get("/x")
    assert r.status_code == 429
    assert r.seen == []
    assert verdicts.batches == [["stage", "route"], ["stage", "route"]]


def test_returned_effects_that_fail_answer_500(make_client, caplog):
    broken = Verdicts(inline=True)
    r = make_client([Returns(Verdict(broken, "broken", 1))]).get("/x")
    assert r.status_code == 500
    assert r.json() == {"message": "Internal server error"}
    assert r.seen == []
    r = make_client([Returns(Call(_fails), Phase.AUTHORIZE)]).get("/x")
    assert r.status_code == 500
    assert r.seen == []


class _Answers:
    """An inline batcher answering every effect with ``answer``, or raising it."""

    inline = True

    def __init__(self, answer: Any, *, raises: bool = False) -> None:
        self.answer, self.raises = answer, raises

    def run_many_sync(self, effects: list[Any]) -> list[Any]:
        if self.raises:
            raise self.answer
        return [self.answer] * len(effects)

    async def run_many_async(self, effects: list[Any]) -> list[Any]:  # pragma: no cover
        return self.run_many_sync(effects)


@pytest.mark.parametrize(
    ("answer", "raises", "status", "authorizer"),
    [
        pytest.param(Allow(authorizer={"plan": "gold"}), False, 200, {"plan": "gold"}, id="allow"),
        pytest.param(Deny("QUOTA_EXCEEDED"), False, 429, None, id="deny"),
        pytest.param(RuntimeError("store down"), False, 500, None, id="returns an error"),
        pytest.param(RuntimeError("store down"), True, 500, None, id="raises"),
        pytest.param("not a decision", False, 500, None, id="not a decision"),
    ],
)
def test_an_effect_alone_in_its_phase_on_an_inline_batcher(
    make_client, caplog, answer, raises, status, authorizer
):
    # Performed where the flow returned it, with the same outcomes as through the machinery.
    effect = Verdict(_Answers(answer, raises=raises), "k", 1)
    r = make_client([Returns(effect, Phase.API_KEY)]).get("/x")
    assert r.status_code == status
    if status == 200:
        assert r.json()["context"]["authorizer"] == authorizer
    else:
        assert r.seen == []


def test_a_returned_call_is_performed_by_the_adapter(make_client):
    allow = Allow(authorizer={"who": "call"})
    r = make_client([Returns(Call(lambda: allow), Phase.AUTHORIZE)]).get("/x")
    assert r.status_code == 200
    assert r.json()["context"]["authorizer"] == {"who": "call"}


# -- flows bound to methods ----------------------------------------------------------------


class _OptionsOnly(BasePolicy):
    """Answers OPTIONS itself; for the other methods only its response hook runs."""

    phase = Phase.CORS
    flow_methods = frozenset({"OPTIONS"})

    def __init__(self, log: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.log = log

    def flow(self, request: Any, context: Any) -> Any:
        self.log.append(f"flow {request.method}")
        return Respond(204, [(b"x-answered", b"gateway")])

    def on_response(self, request: Any, context: Any, head: Any) -> None:
        self.log.append(f"hook {request.method}")
        head.headers.append((b"x-hooked", b"1"))


@pytest.mark.parametrize("routes", [None, ["ANY /x"]], ids=["every-request", "one-route"])
def test_flow_methods_limit_the_flow_not_the_hooks(make_client, routes):
    log: list[str] = []
    client = make_client([_OptionsOnly(log, routes=routes), Tag("after", Phase.VALIDATE, log=log)])
    r = client.get("/x")
    assert r.status_code == 200
    assert r.json()["context"]["authorizer"] == {"after": True}  # the app answered
    assert r.headers["x-hooked"] == "1"
    assert log == ["after", "hook GET"]
    log.clear()
    r = client.options("/x")
    assert r.status_code == 204
    assert r.headers["x-answered"] == "gateway"
    assert log == ["flow OPTIONS", "hook OPTIONS"]


def test_flow_methods_with_methods_no_flow_names(make_client):
    log: list[str] = []
    client = make_client([_OptionsOnly(log), Tag("after", Phase.VALIDATE, log=log)])
    for method in ("PURGE", "BREW", "DELETE", "PURGE"):
        r = client.request(method, "/x")
        assert "x-answered" not in r.headers  # the app answered (its own 405 for odd ones)
        assert r.headers["x-hooked"] == "1"
    expected = [["after", f"hook {m}"] for m in ("PURGE", "BREW", "DELETE", "PURGE")]
    assert log == [entry for pair in expected for entry in pair]
