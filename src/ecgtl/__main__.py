import sys

from ecgtl.cli import main

sys.exit(main())
