"""``python -m loadspec.conformance.benchmarks compare|render``: see ``summary.main``."""

import sys

from loadspec.conformance.benchmarks.summary import main

sys.exit(main())
