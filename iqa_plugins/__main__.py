import sys

from iqa_plugins.cli import main

sys.exit(main())
