"""`python -m voicebridge` = the `voicebridge` command."""

import sys

from .cli import main

sys.exit(main())
