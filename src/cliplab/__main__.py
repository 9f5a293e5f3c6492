import sys

from cliplab.cli.main import main

sys.exit(main())
