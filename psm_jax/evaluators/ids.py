"""P-IDS and U-IDS (CoModGAN's paired / unpaired Inception discriminative scores) as MAT computes them.

mat_metrics.md §3: a linear SVM, scikit-learn ``LinearSVC(dual=False)`` with its defaults (L2
penalty, squared hinge, C = 1, liblinear primal solver, intercept appended as a constant feature
and therefore L2-penalised too, tol 1e-4, max_iter 1000), trained on the raw (unstandardised)
features of ``concat(real, fake)`` with labels real = 1, fake = 0.

* U-IDS = 1 - accuracy of that SVM on the very samples it was trained on (no held-out split).
* P-IDS = mean_i [decision(fake_i) > decision(real_i)] (strict), fake_i paired with its own real_i.
  The pairing is by index, so the caller must pass rows in the same (file-stem) order; a wrong
  pairing drives P-IDS towards zero (MAT issues #63, #86, #131).

With N per class well below the feature dimension (2048) the SVM separates almost anything and both
scores fall far below 0.5 even for identical distributions; the published numbers use N = 36,500
(Places2) or 2,993 (CelebA-HQ).
"""
from __future__ import annotations

import numpy as np


def fit_svm(real: np.ndarray, fake: np.ndarray):
    """The fitted ``LinearSVC`` of MAT's protocol (exposed for tests and diagnostics)."""
    # Deferred: scikit-learn takes about 1 s to import, and only the IDS metric needs it.
    from sklearn.svm import LinearSVC

    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    x = np.concatenate([real, fake])
    y = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    # MAT's defaults exactly; a ConvergenceWarning (max_iter 1000 reached) is left visible, as in MAT.
    return LinearSVC(dual=False).fit(x, y)


def ids_from_features(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """(p_ids, u_ids) as fractions in [0, 1] (papers print them in %). Rows are index-paired."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or real.shape != fake.shape:
        raise ValueError(f"P-IDS needs index-paired features of one shape [N, D]; got {real.shape} "
                         f"and {fake.shape}")
    svm = fit_svm(real, fake)
    x = np.concatenate([real, fake]).astype(np.float32)
    y = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    u_ids = 1.0 - float(svm.score(x, y))
    d_real = svm.decision_function(real.astype(np.float32))
    d_fake = svm.decision_function(fake.astype(np.float32))
    p_ids = float(np.mean(d_fake > d_real))
    return p_ids, u_ids
