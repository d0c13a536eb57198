"""The storage room: everything the server keeps in its data folder's LMDB environment, and nothing else opens it.

`schema` names every database, meta key and key layout; `environment` opens the folder (one server at a time)
and turns a full disk into STORAGE_FULL; `codec` lays out the replicated records. `store.Store` holds the
replicated data (lists, entries and their fingerprints, API keys, the audit log) with each list's change log
and index snapshots; `checks`, `outbox`, `feedback` and `flood` hold what one node keeps for itself; `verify`
reads it all back for `lookalike verify`.
"""
