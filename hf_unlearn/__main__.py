"""`python -m hf_unlearn`: the `hf-unlearn` command line."""

import sys

from .cli import main


sys.exit(main())
