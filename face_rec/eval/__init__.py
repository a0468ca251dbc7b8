"""Verification evaluation: embeddings, pure-numpy metrics, the pair-list protocols."""
