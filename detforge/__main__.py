import sys

from detforge.cli import main

sys.exit(main())
