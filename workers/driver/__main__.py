"""``python -m workers.driver``: see `workers.driver`."""

import sys

from workers.driver.cli import main

sys.exit(main())
