"""QA-CLIMS's region-image-text contrastive training: text features, losses, train_ritc
(workflow/rules/ritc.smk).
"""
