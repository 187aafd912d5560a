import sys

from rlhf_loop.cli.main import main

sys.exit(main())
