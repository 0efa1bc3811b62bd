"""The study the project serves: its runs and their results, layout, statistics, tables
and report, the CPU demo sweep and the full-scale gather.
"""
