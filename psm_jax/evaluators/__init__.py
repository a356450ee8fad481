"""Evaluators: metrics computed on inpainted outputs (PSM Sec. 4.1 metrics, MAT's protocol).

* ``fid`` / ``ids``: FID and P-IDS / U-IDS from Inception pool features (CoModGAN/MAT math).
* ``inception``: the FID Inception-v3 in Flax; ``convert_inception`` turns PyTorch files into ``.npz``.
* ``lpips``: LPIPS (AlexNet, v0.1); ``convert_lpips`` builds its ``.npz``.
* ``image_metrics``: PSNR, SSIM, L1 on composited uint8 images.
* ``calibration``: is PSM's sigma a usable uncertainty (Spearman, NLL, coverage, reliability).
* ``inpainting``: ``evaluate_spread``, the one code path used by the CLI and the training loop.
* ``torch_io``: a torch-free, restricted reader of PyTorch checkpoint files.
"""
