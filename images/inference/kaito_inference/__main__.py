"""`python -m kaito_inference`: the inference server (see `--help`)."""

import sys

from .app import main

if __name__ == "__main__":  # vLLM's engine processes re-import __main__ when spawned
    sys.exit(main())
