"""Per-list nearest-neighbour indexes: arrays and int64 ids in, ids and distances out.

Knows numpy and FAISS only; persistence is bytes handed to whoever stores them.
"""

from lookalike.index.list_index import EMBEDDING_DIM, PDQ_BITS, IndexCheckpoint, ListIndex, configure_threads

__all__ = ["EMBEDDING_DIM", "PDQ_BITS", "IndexCheckpoint", "ListIndex", "configure_threads"]
