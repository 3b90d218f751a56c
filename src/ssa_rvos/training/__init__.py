"""Training SSA (spec Sec. 6): run configs and recipes (``config``), training clips (``clips``), the losses
(``losses``, ``matcher``) and the loop with checkpoints and resuming (``trainer``).

Nothing is imported here: ``import ssa_rvos.training`` stays cheap, and ``import ssa_rvos`` never
imports training code. Use the modules, e.g. ``from ssa_rvos.training.trainer import train``.
"""
