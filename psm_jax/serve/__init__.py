"""An interactive inpainting page: brush a hole, watch the pixel spread (paper Sec. 3.1.2, Fig. 3) fill it.

``python -m psm_jax.serve --workdir runs/demo`` (or ``--artifact model.jaxexport``) serves one page and a small
API on http://127.0.0.1:8000. Modules:

* ``__main__``: the command line (flags, binding, one-line errors);
* ``app``: the Starlette app (routes, upload caps, JSON errors);
* ``forms``: decoding and checking a request's image, mask and fields;
* ``model``: the workdir / artifact backend (``Inpainter`` and its size strategies);
* ``worker``: the single model thread behind a bounded queue;
* ``render``: PNG responses and the per-iteration panels (m_t, mu_t, sigma_t);
* ``examples``: the run's held-out images, by index;
* ``static/``: the page (plain HTML, CSS and JavaScript; nothing loaded from elsewhere).
"""
from psm_jax.serve.app import create_app
from psm_jax.serve.forms import Limits
from psm_jax.serve.model import Backend, from_artifact, from_workdir

__all__ = ["Backend", "Limits", "create_app", "from_artifact", "from_workdir"]
