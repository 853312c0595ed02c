import sys

from cpt_harness.cli import main

sys.exit(main())
