import sys

from segutils.cli import main

sys.exit(main())
