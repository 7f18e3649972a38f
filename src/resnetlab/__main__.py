"""`python -m resnetlab …` is the `resnetlab` command."""
import sys

from .cli import main

sys.exit(main())
