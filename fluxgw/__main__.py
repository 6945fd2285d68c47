import sys

from fluxgw.cli import main

sys.exit(main())
