"""DeepLab on the pseudo masks: training, inference, its loss (workflow/rules/deeplab.smk)."""
