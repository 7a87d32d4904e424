"""`python -m kaito_inference.fetch`: see the package docstring and `--help`."""

import sys

from kaito_inference.fetch.cli import main

if __name__ == "__main__":
    sys.exit(main())
