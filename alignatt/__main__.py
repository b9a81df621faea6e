"""`python -m alignatt COMMAND ...`: the same as the `alignatt` command."""
import sys

from alignatt.cli.main import main

sys.exit(main())
