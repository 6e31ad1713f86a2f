"""`SentenceEmbedder`: tokenize with `tokenizers`, embed with ONNX Runtime.

The model folder is produced by `python -m libs.embedding.build`; its graph already applies mean
pooling and L2 normalisation, so every returned row has unit norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

EMBEDDING_DIM = 384
# all-MiniLM-L6-v2 was trained with 256-token inputs; longer texts are truncated.
MAX_TOKENS = 256
# Texts are sorted by length and run in batches of at most this many rows.
BATCH_SIZE = 32


class SentenceEmbedder:
    """Embeds sentences into unit-norm 384-d float32 vectors.

    Safe to call from several threads at once: the tokenizer is configured once at load time and
    never mutated, and ONNX Runtime sessions support concurrent `run` calls.
    """

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, dim: int) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._dim = dim
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> SentenceEmbedder:
        """Load a model folder built by `libs.embedding.build`."""
        folder = Path(path)
        model_file = folder / "model.onnx"
        tokenizer_file = folder / "tokenizer.json"
        for required in (model_file, tokenizer_file):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} is missing; build it with `python -m libs.embedding.build --out {folder}`"
                )
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        dim = session.get_outputs()[0].shape[-1]
        return cls(session, tokenizer, int(dim) if isinstance(dim, int) else EMBEDDING_DIM)

    @property
    def dim(self) -> int:
        """Length of each embedding vector."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts`; returns an array of shape (len(texts), dim), rows with unit L2 norm."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for begin in range(0, len(order), BATCH_SIZE):
            rows = order[begin : begin + BATCH_SIZE]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            (vectors,) = self._session.run(["sentence_embedding"], feeds)
            out[rows] = vectors
        return out
