"""`python -m metergate` is the `metergate` console script."""

import sys

from metergate.cli import main

sys.exit(main())
