"""Entry point of ``python -m client.secondary``."""

import sys

from client.secondary.service import main

sys.exit(main())
