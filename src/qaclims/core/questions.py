"""The paper's QAPE questions (QA-CLIMS, ACM MM 2023), shared by the VQA stage and the
synthetic world's answer generator. ``{}`` is replaced by the class name."""

from __future__ import annotations

#: The paper's foreground questions (QA-CLIMS ``visual_questions.py``).
FG_QUESTIONS: tuple[str, ...] = (
    "What kind of {} is in the photo?",
    "What type of {} is in the photo?",
    "What is this {} also called?",
    "What is this {} usually called?",
    "What is another word for this {}?",
    "What is another name for this {}?",
)
#: The paper's background questions.
BG_QUESTIONS: tuple[str, ...] = (
    "what is above the {}?",
    "what is under the {}?",
    "what is behind the {}?",
    "what is around the {}?",
    "what is next to the {}?",
    "what is the left side of {}?",
    "what is the right side of {}?",
    "what scene is the {} in?",
    "what environment is the {} in?",
    "what place is the {} in?",
)
