"""Machine translation of QA corpora into parallel training data (engines, the
resumable corpus translation).
"""
