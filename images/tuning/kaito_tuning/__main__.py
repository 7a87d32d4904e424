"""`python -m kaito_tuning`: fine-tune a model and save a LoRA adapter (see `--help`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
