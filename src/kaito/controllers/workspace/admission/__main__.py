"""``python -m kaito.controllers.workspace.admission serve|manifests`` (see `cli`)."""

import sys

from kaito.controllers.workspace.admission.cli import main

sys.exit(main())
