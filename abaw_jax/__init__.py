"""abaw_jax: MAE face pretraining, fusion transformers and ABAW evaluation in JAX/Flax."""
