"""Cluster mode's replication layer over NATS JetStream (issue #19): the change log every node appends to
and applies in order, snapshots, leases, work queues and key-value maps. Knows nothing of gRPC or LMDB;
its only import from the rest of Lookalike is the domain errors."""

from lookalike.server.replication.changelog import ChangeLog, Lag
from lookalike.server.replication.connection import LOG_UNAVAILABLE
from lookalike.server.replication.follower import Follower
from lookalike.server.replication.key_value import Entry, KeyValueMap
from lookalike.server.replication.work_queue import WorkItem, WorkQueue

__all__ = ["LOG_UNAVAILABLE", "ChangeLog", "Entry", "Follower", "KeyValueMap", "Lag", "WorkItem", "WorkQueue"]
