"""Corpora, vocabularies, the model's input text, the hybrid batch schedule and the input
pipeline: everything between files on disk and host-local batches of token ids.
"""
