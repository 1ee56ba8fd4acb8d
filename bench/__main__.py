"""`.venv/bin/python -m bench [--quick] ...`: see bench/README.md."""

import sys

from bench.cli import main

sys.exit(main())
