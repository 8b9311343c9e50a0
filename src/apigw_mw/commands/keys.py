"""``apigw-mw keys generate``: mint API keys of API Gateway's shape.

    apigw-mw keys generate                      # one key, printed alone
    apigw-mw keys generate -n 3 --format csv --plan basic > keys.csv
    apigw-mw keys generate --format json --name alice

The CSV is API Gateway's import format (``Name,Key,Description,Enabled,UsagePlanIds``), which
:meth:`apigw_mw.ApiKeys.from_csv` reads back. Keys are printed once and not kept anywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from ..auth.api_keys import ApiKey, generate_api_key


def register(subparsers: Any) -> None:
    """Add the ``keys`` command and its ``generate`` subcommand."""
    keys = subparsers.add_parser("keys", help="API key tools")
    sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    gen = sub.add_parser(
        "generate",
        help="print new random API keys",
        description="Print new random API keys (letters and digits, as API Gateway makes them).",
    )
    gen.add_argument("-n", "--count", type=int, default=1, help="how many keys (default 1)")
    gen.add_argument(
        "--length", type=int, default=40, help="characters per key, 20-128 (default 40)"
    )
    gen.add_argument(
        "--format",
        choices=("plain", "csv", "json"),
        default="plain",
        help="plain: one key a line; csv: API Gateway's import format; json: key, id, name",
    )
    gen.add_argument("--name", default="", help="key name (numbered when --count > 1)")
    gen.add_argument("--plan", default="", help="usage plan id written to the CSV")
    gen.add_argument("--disabled", action="store_true", help="mark the keys disabled")
    gen.set_defaults(func=generate)
    keys.set_defaults(func=lambda args: _usage(keys))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def generate(args: argparse.Namespace) -> int:
    """Print ``args.count`` new keys in ``args.format``; returns the exit code."""
    if not 1 <= args.count <= 10_000:
        print("apigw-mw keys generate: --count must be 1..10000", file=sys.stderr)
        return 2
    if not 20 <= args.length <= 128:
        print("apigw-mw keys generate: --length must be 20..128", file=sys.stderr)
        return 2
    rows = []
    for i in range(args.count):
        value = generate_api_key(args.length)
        name = args.name
        if name and args.count > 1:
            name = f"{name}-{i + 1}"
        rows.append((name, value))
    out = sys.stdout
    if args.format == "plain":
        for _, value in rows:
            out.write(value + "\n")
    elif args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["Name", "Key", "Description", "Enabled", "UsagePlanIds"])
        for name, value in rows:
            writer.writerow([name, value, "", "false" if args.disabled else "true", args.plan])
    else:
        items = [
            {
                "id": ApiKey(value).id,
                "name": name or None,
                "key": value,
                "enabled": not args.disabled,
                "plan": args.plan or None,
            }
            for name, value in rows
        ]
        json.dump(items if args.count > 1 else items[0], out, indent=2)
        out.write("\n")
    return 0
