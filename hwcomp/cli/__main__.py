"""``python -m hwcomp.cli``: the ``hwcomp`` command."""

import sys

from . import main

sys.exit(main())
