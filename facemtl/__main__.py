import sys

from facemtl.cli import main

sys.exit(main())
