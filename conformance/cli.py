"""The ``loadspec`` command: ``loadspec check PATH_OR_HUB_ID``, ``loadspec e2e`` (the E2E CLI), ``loadspec cache``."""

from __future__ import annotations

import sys

from loadspec.conformance.check import main as check_main
from loadspec.conformance.e2e.cache_command import main as cache_main
from loadspec.conformance.e2e.cli import main as e2e_main

USAGE = ("usage: loadspec {check,e2e,cache} ...\n  check PATH_OR_HUB_ID [--impl NAME] [--json]\n"
         "  e2e [--impl NAME] ...\n  cache [--prune [--keep N]] [--json]")


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; 2 on a usage error."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "check":
        return check_main(rest)
    if command == "e2e":
        return e2e_main(rest)
    if command == "cache":
        return cache_main(rest)
    print(f"loadspec: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
