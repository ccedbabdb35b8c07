"""python -m quantcore ..."""
import sys

from .cli import main

sys.exit(main())
