"""The benchmark's modules are scripts side by side, imported by their bare names."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
