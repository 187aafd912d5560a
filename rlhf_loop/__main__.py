import sys

from rlhf_loop.cli import main

sys.exit(main())
