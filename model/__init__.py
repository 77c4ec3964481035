"""Training side of the project: corpus, tokenizer, the attention seq2seq model, training and evaluation.

Everything here may import torch; nothing in service/ imports from here.
"""
