"""Sentence embeddings with all-MiniLM-L6-v2 exported to ONNX (shared by safety and cache)."""

from libs.embedding.embedder import EMBEDDING_DIM, SentenceEmbedder

__all__ = ["EMBEDDING_DIM", "SentenceEmbedder"]
