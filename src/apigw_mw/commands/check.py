"""``apigw-mw check SPEC``: what the gateway will enforce for an exported OpenAPI definition.

Prints a table of every route with the policies that apply to it, the settings that apply to
every request, and every ``x-amazon-apigateway-*`` extension that is ignored, with the reason.
Exit status 0 when the definition loads, 1 (with the error) when it does not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..exceptions import ConfigurationError


def register(subparsers: Any) -> None:
    """Add ``check`` to the ``apigw-mw`` command."""
    parser = subparsers.add_parser(
        "check",
        help="show the routes and policies an exported OpenAPI definition gives",
        description=(
            "Load an API Gateway OpenAPI export (OpenAPI 3 or Swagger 2, JSON or YAML) and "
            "print every route with the policies the gateway will enforce on it, and every "
            "extension it ignores and why. Lambda authorizer handlers, IAM credentials and "
            "API keys are not needed: the table says where they will be."
        ),
    )
    parser.add_argument("spec", help="path of the definition (.json, .yaml)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..openapi import _build

    out = out or sys.stdout
    try:
        api = _build(
            args.spec,
            authorizers={},
            api_keys=None,
            stage=None,
            throttle=None,
            storage="memory://",
            check=True,
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [(op.key, api.enforced.get(op.key) or ["(none)"]) for op in api.operations]
    width = max([len("ROUTE"), *(len(key) for key, _ in rows)])
    print(f"{'ROUTE':<{width}}  POLICIES", file=out)
    for key, policies in rows:
        print(f"{key:<{width}}  {policies[0]}", file=out)
        for more in policies[1:]:
            print(f"{'':<{width}}  {more}", file=out)
    if api.everywhere:
        print("\nEVERY REQUEST", file=out)
        for text in api.everywhere:
            print(f"  {text}", file=out)
    print(f"\nIGNORED ({len(api.ignored)})", file=out)
    for pointer, reason in api.ignored:
        print(f"  #{pointer}: {reason}", file=out)
    return 0
