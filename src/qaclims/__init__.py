"""QA-CLIMS: question-answer cross-language-image matching for weakly supervised segmentation.

The library behind the Snakemake workflow. Each stage module exposes one entry point,
``run(...)``, that takes explicit paths and a typed config object and works without
Snakemake.
"""

__version__ = "0.1.0"
