"""Running on Cloud TPU slices: the multi-host watchdog, slices and compile-only devices,
ahead-of-time compilation and the MIRACL stage's plan.
"""
