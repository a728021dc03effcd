"""`aruntime release add|list|show|verify|alias|served`: the release registry from the shell,
on the local journal or a server's (`--server URL`).

    aruntime release add prompt support prompts/support-v2.txt --input ticket=T-12
    aruntime release alias support sha256:1a2b stable
    aruntime release served support --at 2026-12-02T10:00:00Z
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aruntime.adapt.artifact import Kind
from aruntime.adapt.cli_common import add_common, controller, http, local, show, who
from aruntime.errors import UsageError
from aruntime.timeutil import parse_rfc3339


def add_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=[k.value for k in Kind])
    parser.add_argument("name")
    parser.add_argument("path", type=Path)
    parser.add_argument("--by", default=None, help="who makes it (default: this user; with "
                        "--server, the credential's principal)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                        help="an input it was made from (repeatable), kept in its provenance")
    add_common(parser)


def run_add(args: argparse.Namespace) -> int:
    inputs = dict(i.split("=", 1) for i in args.input if "=" in i)
    if len(inputs) != len(args.input):
        raise UsageError("--input is NAME=VALUE")
    if args.server:
        if args.kind == Kind.MODEL.value:
            body = {"kind": args.kind, "name": args.name, "path": str(args.path.resolve()),
                    "inputs": inputs}
        else:
            try:
                body = {"kind": args.kind, "name": args.name, "inputs": inputs,
                        "content": args.path.read_text(encoding="utf-8")}
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"{args.path}: {exc}") from None
        return show(http(args, "POST", "/v1/releases", json=body))
    c = controller(args)
    release = local(lambda: c.registry.add(Kind(args.kind), args.name, args.path,
                                           args.by or who(), inputs))
    return show(release.to_json())


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?")
    add_common(parser)


def run_list(args: argparse.Namespace) -> int:
    if args.server:
        params = {"name": args.name} if args.name else {}
        return show(http(args, "GET", "/v1/releases", params=params)["data"])
    return show([r.to_json() for r in controller(args).registry.releases(args.name)])


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    add_common(parser)


def run_show(args: argparse.Namespace) -> int:
    if args.server:
        return show(http(args, "GET", f"/v1/releases/{args.name}"))
    reg = controller(args).registry
    versions = [r.to_json() for r in reg.releases(args.name)]
    if not versions:
        raise UsageError(f"no release named {args.name!r}")
    return show({"name": args.name, "versions": versions, "aliases": reg.aliases(args.name),
                 "moves": reg.moves(args.name), "traffic": reg.traffic_now(args.name)})


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("version", nargs="?", default="stable",
                        help="a version, a prefix of it, or an alias (default: stable)")
    add_common(parser)


def run_verify(args: argparse.Namespace) -> int:
    if args.server:
        return show(http(args, "GET", f"/v1/releases/{args.name}/versions/{args.version}/verify"))
    reg = controller(args).registry
    release = local(lambda: reg.get(args.name, args.version))
    statement = local(lambda: reg.verify(release))
    print(f"{args.name}@{release.version}: verified (signed by a trusted key; content "
          f"unchanged) — {statement['predicate']['by']} at {statement['predicate']['at']}")
    return 0


def add_alias_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("alias")
    add_common(parser)


def run_alias(args: argparse.Namespace) -> int:
    if args.server:
        return show(http(args, "POST", f"/v1/releases/{args.name}/aliases",
                         json={"version": args.version, "alias": args.alias}))
    version = local(lambda: controller(args).move_alias(args.name, args.version, args.alias,
                                                        who()))
    return show({"name": args.name, "alias": args.alias, "version": version})


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--at", required=True, metavar="TIME", help="a UTC instant, RFC 3339 "
                        "with Z (2026-12-02T10:00:00Z)")
    add_common(parser)


def run_served(args: argparse.Namespace) -> int:
    try:
        at = parse_rfc3339(args.at)
    except ValueError as exc:
        raise UsageError(f"--at {args.at}: {exc}") from None
    if args.server:
        return show(http(args, "GET", f"/v1/releases/{args.name}/served",
                         params={"at": args.at}))
    got = controller(args).registry.served(args.name, at)
    if got is None:
        raise UsageError(f"nothing of {args.name} was served at {args.at}")
    return show(got)
