"""From a training run to an encoder: the artifact format, `load_encoder` for every
kind of path, Hugging Face export and model cards.
"""
