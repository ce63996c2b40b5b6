"""`sft-pipeline chat`: the conversation (history.py), what answers it (backends.py), the loop (session.py)."""
