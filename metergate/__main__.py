"""`python -m metergate` is the `metergate` console script."""

import sys

from metergate.entry import main

sys.exit(main())
