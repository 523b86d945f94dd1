import sys

from hydranet.cli import main

sys.exit(main())
