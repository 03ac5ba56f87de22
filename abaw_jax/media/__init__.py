"""Video, face and audio code shared by the data_prep command-line tools and `python -m abaw_jax.predict`."""
