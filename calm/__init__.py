"""The CALM model library: data and tokenizer, autoencoder, energy transformer, training, evaluation.

Submodules are imported on demand (``from calm.data import load_token_ids``) so that importing ``calm``
stays cheap and Ray is only needed by ``calm.train``.
"""
