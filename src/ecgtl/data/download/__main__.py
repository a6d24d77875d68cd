"""``python -m ecgtl.data.download DB ...``: the ``download`` subcommand on its own."""

import sys

from ecgtl.data.download.cli import main

sys.exit(main())
