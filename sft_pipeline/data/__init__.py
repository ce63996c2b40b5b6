"""Data as the stages see it: sources and record shapes to conversations, conversations to text
with assistant spans, text to tokens, tokens to packed blocks. Pure functions over arrays and
Arrow files; nothing here trains or imports the training layer."""
