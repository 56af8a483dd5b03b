"""The files passed between stages, each format in one place (weights, ...)."""
