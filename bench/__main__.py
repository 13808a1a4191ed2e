"""`python -m bench [--only SECTIONS] [--quick] [--out FILE]`: the training-speed suite (bench/suite.py)."""

import sys

from bench.suite import main

sys.exit(main())
