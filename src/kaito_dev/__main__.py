"""``python -m kaito_dev ...`` is ``kaito dev ...`` (`kaito_dev.cli`)."""

import sys

from kaito_dev.cli import main

sys.exit(main())
