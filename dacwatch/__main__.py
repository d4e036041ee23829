import sys

from dacwatch.cli import main

sys.exit(main())
