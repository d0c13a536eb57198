import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ACCEPT: _ClassVar[Decision]
    REVIEW: _ClassVar[Decision]
    REJECT: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
ACCEPT: Decision
REVIEW: Decision
REJECT: Decision

class Image(_message.Message):
    __slots__ = ("data", "base64", "url")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BASE64_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    base64: str
    url: str
    def __init__(self, data: _Optional[bytes] = ..., base64: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class Hashes(_message.Message):
    __slots__ = ("sha256", "pdq", "pdq_quality", "phash", "md5")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PDQ_FIELD_NUMBER: _ClassVar[int]
    PDQ_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PHASH_FIELD_NUMBER: _ClassVar[int]
    MD5_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    pdq: str
    pdq_quality: int
    phash: str
    md5: str
    def __init__(self, sha256: _Optional[str] = ..., pdq: _Optional[str] = ..., pdq_quality: _Optional[int] = ..., phash: _Optional[str] = ..., md5: _Optional[str] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListInfo(_message.Message):
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "model", "entry_count", "created", "dihedral")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    entry_count: int
    created: _timestamp_pb2.Timestamp
    dihedral: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., model: _Optional[str] = ..., entry_count: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dihedral: _Optional[bool] = ...) -> None: ...

class CreateListRequest(_message.Message):
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "model", "dihedral")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    dihedral: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., model: _Optional[str] = ..., dihedral: _Optional[bool] = ...) -> None: ...

class GetListRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListListsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListListsResponse(_message.Message):
    __slots__ = ("lists",)
    LISTS_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedCompositeFieldContainer[ListInfo]
    def __init__(self, lists: _Optional[_Iterable[_Union[ListInfo, _Mapping]]] = ...) -> None: ...

class UpdateListRequest(_message.Message):
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "dihedral")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    dihedral: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., dihedral: _Optional[bool] = ...) -> None: ...

class DeleteListRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteListResponse(_message.Message):
    __slots__ = ("name", "entries_deleted")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    name: str
    entries_deleted: int
    def __init__(self, name: _Optional[str] = ..., entries_deleted: _Optional[int] = ...) -> None: ...

class AddEntryRequest(_message.Message):
    __slots__ = ("list", "image", "meta", "id")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LIST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    image: Image
    meta: _containers.ScalarMap[str, str]
    id: str
    def __init__(self, list: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., meta: _Optional[_Mapping[str, str]] = ..., id: _Optional[str] = ...) -> None: ...

class AddEntryResponse(_message.Message):
    __slots__ = ("list", "id", "sha256", "duplicate", "hashes")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    sha256: str
    duplicate: bool
    hashes: Hashes
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., sha256: _Optional[str] = ..., duplicate: _Optional[bool] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ...) -> None: ...

class AddEntriesResult(_message.Message):
    __slots__ = ("index", "entry", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    entry: AddEntryResponse
    error: ItemError
    def __init__(self, index: _Optional[int] = ..., entry: _Optional[_Union[AddEntryResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("list", "id")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("list", "id", "hashes", "meta", "created", "model", "embedding")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    hashes: Hashes
    meta: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    model: str
    embedding: bytes
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ..., meta: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., embedding: _Optional[bytes] = ...) -> None: ...

class RemoveEntryRequest(_message.Message):
    __slots__ = ("list", "id")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RemoveEntryResponse(_message.Message):
    __slots__ = ("list", "id")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("image", "lists", "meta", "top_k", "min_score", "request_id")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: Image
    lists: _containers.RepeatedScalarFieldContainer[str]
    meta: _containers.ScalarMap[str, str]
    top_k: int
    min_score: float
    request_id: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., lists: _Optional[_Iterable[str]] = ..., meta: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class RequestInfo(_message.Message):
    __slots__ = ("request_id", "timestamp")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SuggestedActions(_message.Message):
    __slots__ = ("reject", "review")
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    reject: bool
    review: bool
    def __init__(self, reject: _Optional[bool] = ..., review: _Optional[bool] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("exact_sha256", "pdq_distance", "embedding_similarity", "model", "signals", "exact_md5")
    EXACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PDQ_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    EXACT_MD5_FIELD_NUMBER: _ClassVar[int]
    exact_sha256: bool
    pdq_distance: int
    embedding_similarity: float
    model: str
    signals: _containers.RepeatedScalarFieldContainer[str]
    exact_md5: bool
    def __init__(self, exact_sha256: _Optional[bool] = ..., pdq_distance: _Optional[int] = ..., embedding_similarity: _Optional[float] = ..., model: _Optional[str] = ..., signals: _Optional[_Iterable[str]] = ..., exact_md5: _Optional[bool] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("list", "id", "meta", "score", "evidence", "decision")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    meta: _containers.ScalarMap[str, str]
    score: float
    evidence: Evidence
    decision: Decision
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., score: _Optional[float] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("id", "request", "sha256", "decision", "suggested_actions", "matches", "meta", "hashes")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: RequestInfo
    sha256: str
    decision: Decision
    suggested_actions: SuggestedActions
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    meta: _containers.ScalarMap[str, str]
    hashes: Hashes
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[RequestInfo, _Mapping]] = ..., sha256: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., suggested_actions: _Optional[_Union[SuggestedActions, _Mapping]] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., meta: _Optional[_Mapping[str, str]] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ...) -> None: ...

class CheckStreamResult(_message.Message):
    __slots__ = ("index", "response", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    response: CheckResponse
    error: ItemError
    def __init__(self, index: _Optional[int] = ..., response: _Optional[_Union[CheckResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("id", "name", "role", "lists", "created", "created_by", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    lists: _containers.RepeatedScalarFieldContainer[str]
    created: _timestamp_pb2.Timestamp
    created_by: str
    revoked: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., lists: _Optional[_Iterable[str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., revoked: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("role", "lists", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    lists: _containers.RepeatedScalarFieldContainer[str]
    name: str
    def __init__(self, role: _Optional[str] = ..., lists: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    secret: str
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "key_id", "action", "list", "entry_id", "detail")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    key_id: str
    action: str
    list: str
    entry_id: str
    detail: _containers.ScalarMap[str, str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., action: _Optional[str] = ..., list: _Optional[str] = ..., entry_id: _Optional[str] = ..., detail: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("list", "since", "limit", "page_token")
    LIST_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    list: str
    since: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    def __init__(self, list: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class HashEntry(_message.Message):
    __slots__ = ("id", "pdq", "pdq_quality", "md5", "sha256", "phash", "meta", "embedding", "model")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PDQ_FIELD_NUMBER: _ClassVar[int]
    PDQ_QUALITY_FIELD_NUMBER: _ClassVar[int]
    MD5_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PHASH_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    pdq: str
    pdq_quality: int
    md5: str
    sha256: str
    phash: str
    meta: _containers.ScalarMap[str, str]
    embedding: bytes
    model: str
    def __init__(self, id: _Optional[str] = ..., pdq: _Optional[str] = ..., pdq_quality: _Optional[int] = ..., md5: _Optional[str] = ..., sha256: _Optional[str] = ..., phash: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., embedding: _Optional[bytes] = ..., model: _Optional[str] = ...) -> None: ...

class AddHashRequest(_message.Message):
    __slots__ = ("list", "entry")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    list: str
    entry: HashEntry
    def __init__(self, list: _Optional[str] = ..., entry: _Optional[_Union[HashEntry, _Mapping]] = ...) -> None: ...

class ImportEntriesRequest(_message.Message):
    __slots__ = ("list", "entries")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    list: str
    entries: _containers.RepeatedCompositeFieldContainer[HashEntry]
    def __init__(self, list: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[HashEntry, _Mapping]]] = ...) -> None: ...

class ImportEntriesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddEntriesResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AddEntriesResult, _Mapping]]] = ...) -> None: ...

class ExportEntriesRequest(_message.Message):
    __slots__ = ("list", "with_embeddings")
    LIST_FIELD_NUMBER: _ClassVar[int]
    WITH_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    list: str
    with_embeddings: bool
    def __init__(self, list: _Optional[str] = ..., with_embeddings: _Optional[bool] = ...) -> None: ...

class ExportEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class CheckHashesRequest(_message.Message):
    __slots__ = ("lists", "pdq", "pdq_quality", "md5", "sha256", "meta", "top_k", "min_score", "request_id")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LISTS_FIELD_NUMBER: _ClassVar[int]
    PDQ_FIELD_NUMBER: _ClassVar[int]
    PDQ_QUALITY_FIELD_NUMBER: _ClassVar[int]
    MD5_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedScalarFieldContainer[str]
    pdq: str
    pdq_quality: int
    md5: str
    sha256: str
    meta: _containers.ScalarMap[str, str]
    top_k: int
    min_score: float
    request_id: str
    def __init__(self, lists: _Optional[_Iterable[str]] = ..., pdq: _Optional[str] = ..., pdq_quality: _Optional[int] = ..., md5: _Optional[str] = ..., sha256: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...
