"""The baseline zoo: floors, LR/ECC, and the neural models LEADER is compared with.

Models are looked up by name in :mod:`leader.baselines.registry`; importing this package
imports no model (and neither torch nor RDKit).
"""

from leader.baselines.registry import MODELS, MOLECULE_MODELS, create, load, model_class

__all__ = ["MODELS", "MOLECULE_MODELS", "create", "load", "model_class"]
