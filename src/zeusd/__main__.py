"""``python -m zeusd``."""

import sys

from zeusd.cli import main

sys.exit(main())
