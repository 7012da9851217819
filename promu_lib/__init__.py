"""promu: a reproducible companion to PROMU (Prompt Me Up) and HVPNeT.

Multimodal named entity recognition (MNER) and relation extraction (MRE) on Twitter posts,
with PROMU's prompt-guided multimodal pre-training and HVPNeT's hierarchical visual prefix.
"""

__version__ = "0.1.0"
