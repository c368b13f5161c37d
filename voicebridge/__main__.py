"""`python -m voicebridge` = the `voicebridge` command."""

import sys

from voicebridge.cli import main

sys.exit(main())
