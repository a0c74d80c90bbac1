"""Section 3 of the paper: exact errors of optimal robust linear classifiers.

NumPy/SciPy only, independent of the training code. See docs/theory.md.
"""
