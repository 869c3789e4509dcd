import sys

from sixbit_jax.cli import main

sys.exit(main())
