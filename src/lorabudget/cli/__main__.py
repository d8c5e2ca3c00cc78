import sys

from lorabudget.cli import main

sys.exit(main())
