"""rayssl: distributed-first supervised and self-supervised training on Ray."""

import time

IMPORTED_AT = time.time()  # when this process first imported rayssl (start-up's timeline)

__version__ = "0.1.0"
