"""Evaluation: J and F region/boundary metrics, the Ref-DAVIS17 protocol and the A2D/JHMDB-Sentences metrics.

Modules are imported on demand (``from ssa_rvos.evaluation import metrics``); nothing heavy is imported here.
"""
