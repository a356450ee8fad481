"""psm_jax: JAX/Flax implementation of PSM, the pixel spread model for large-hole inpainting.

Li et al., "Image Inpainting via Iteratively Decoupled Probabilistic Modeling".
"""
__version__ = "0.1.0"
