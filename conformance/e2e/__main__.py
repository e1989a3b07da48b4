"""``python -m loadspec.conformance.e2e``."""

from loadspec.conformance.e2e.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
