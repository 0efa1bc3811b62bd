"""The training loop and what it needs: losses, partitioning, optimizers, the train
step, checkpoints, the run's description (MODEL_DIR), summaries, importers.
"""
