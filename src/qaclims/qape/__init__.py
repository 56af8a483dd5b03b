"""Question-answer prompt engineering: the questions, the VQA stage and the answer corpus
(rules in workflow/rules/vqa.smk).
"""
