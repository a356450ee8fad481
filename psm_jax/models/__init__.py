"""Flax linen modules: StyleGAN2/MAT building blocks, the PSM generator and discriminator."""
