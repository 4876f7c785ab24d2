"""`python -m consumer` is the `imconnector-consumer` command."""

import sys

from consumer.cli import main

sys.exit(main())
