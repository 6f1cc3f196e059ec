"""`python -m synthgen.cli` runs the `synthgen` command."""

import sys

from synthgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
