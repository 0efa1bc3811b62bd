"""Retrieval and its evaluation: exact search, trec_eval metrics, the mono / cross /
multi settings, BEIR and MIRACL corpora at scale, reports.
"""
