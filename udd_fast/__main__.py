import sys

from udd_fast.cli import main

sys.exit(main())
