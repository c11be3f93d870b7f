import sys

from hyperflexis.cli import main

sys.exit(main())
