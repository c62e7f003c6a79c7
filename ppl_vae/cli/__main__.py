"""``python -m ppl_vae.cli``: the ``ppl-vae`` command."""

import sys

from ppl_vae.cli.parser import main

sys.exit(main())
