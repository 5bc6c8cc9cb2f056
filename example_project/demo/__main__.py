"""``python -m example_project.demo``: see :mod:`example_project.demo`."""

import sys

from example_project.demo.main import main

sys.exit(main())
