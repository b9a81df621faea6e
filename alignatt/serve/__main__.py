"""`python -m alignatt.serve`: the same as `alignatt serve`."""
import sys

from alignatt.serve.cli import main

sys.exit(main())
