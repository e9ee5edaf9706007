"""leader: LLM-distilled medication recommendation (LEADER, Liu et al., arXiv 2402.02803).

Importing the package does nothing but define names: no folders, no log handlers,
no heavy imports. Submodules load torch / transformers lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
