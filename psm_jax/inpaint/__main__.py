"""``python -m psm_jax.inpaint``: see :mod:`psm_jax.inpaint.command`."""
import sys

from psm_jax.inpaint.command import main

if __name__ == "__main__":
    sys.exit(main())
