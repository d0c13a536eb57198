import datetime

from google.api import annotations_pb2 as _annotations_pb2
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

class CheckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_STATUS_UNSPECIFIED: _ClassVar[CheckStatus]
    CHECK_PENDING: _ClassVar[CheckStatus]
    CHECK_DONE: _ClassVar[CheckStatus]
    CHECK_FAILED: _ClassVar[CheckStatus]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_PENDING: _ClassVar[DeliveryState]
    DELIVERY_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_FAILED: _ClassVar[DeliveryState]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    FALSE_POSITIVE: _ClassVar[Verdict]
    MISSED_DUPLICATE: _ClassVar[Verdict]
    CONFIRMED: _ClassVar[Verdict]
DECISION_UNSPECIFIED: Decision
ACCEPT: Decision
REVIEW: Decision
REJECT: Decision
CHECK_STATUS_UNSPECIFIED: CheckStatus
CHECK_PENDING: CheckStatus
CHECK_DONE: CheckStatus
CHECK_FAILED: CheckStatus
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_PENDING: DeliveryState
DELIVERY_DELIVERED: DeliveryState
DELIVERY_FAILED: DeliveryState
VERDICT_UNSPECIFIED: Verdict
FALSE_POSITIVE: Verdict
MISSED_DUPLICATE: Verdict
CONFIRMED: Verdict

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
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "model", "entry_count", "created", "dihedral", "kind", "guarded", "checks_last_day", "thumbnails", "consistency_token", "keypoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GUARDED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_LAST_DAY_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    entry_count: int
    created: _timestamp_pb2.Timestamp
    dihedral: bool
    kind: str
    guarded: _containers.RepeatedCompositeFieldContainer[GuardedEntry]
    checks_last_day: CheckCounts
    thumbnails: bool
    consistency_token: str
    keypoints: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., model: _Optional[str] = ..., entry_count: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dihedral: _Optional[bool] = ..., kind: _Optional[str] = ..., guarded: _Optional[_Iterable[_Union[GuardedEntry, _Mapping]]] = ..., checks_last_day: _Optional[_Union[CheckCounts, _Mapping]] = ..., thumbnails: _Optional[bool] = ..., consistency_token: _Optional[str] = ..., keypoints: _Optional[bool] = ...) -> None: ...

class CheckCounts(_message.Message):
    __slots__ = ("accept", "review", "reject")
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    accept: int
    review: int
    reject: int
    def __init__(self, accept: _Optional[int] = ..., review: _Optional[int] = ..., reject: _Optional[int] = ...) -> None: ...

class GuardedEntry(_message.Message):
    __slots__ = ("id", "since", "recent_matches", "usual_matches")
    ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    RECENT_MATCHES_FIELD_NUMBER: _ClassVar[int]
    USUAL_MATCHES_FIELD_NUMBER: _ClassVar[int]
    id: str
    since: _timestamp_pb2.Timestamp
    recent_matches: float
    usual_matches: float
    def __init__(self, id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recent_matches: _Optional[float] = ..., usual_matches: _Optional[float] = ...) -> None: ...

class CreateListRequest(_message.Message):
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "model", "dihedral", "kind", "thumbnails", "keypoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    dihedral: bool
    kind: str
    thumbnails: bool
    keypoints: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., model: _Optional[str] = ..., dihedral: _Optional[bool] = ..., kind: _Optional[str] = ..., thumbnails: _Optional[bool] = ..., keypoints: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("name", "description", "review_threshold", "reject_threshold", "dihedral", "thumbnails", "keypoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    dihedral: bool
    thumbnails: bool
    keypoints: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., review_threshold: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., dihedral: _Optional[bool] = ..., thumbnails: _Optional[bool] = ..., keypoints: _Optional[bool] = ...) -> None: ...

class DeleteListRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteListResponse(_message.Message):
    __slots__ = ("name", "entries_deleted", "consistency_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    entries_deleted: int
    consistency_token: str
    def __init__(self, name: _Optional[str] = ..., entries_deleted: _Optional[int] = ..., consistency_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("list", "id", "sha256", "duplicate", "hashes", "consistency_token")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    sha256: str
    duplicate: bool
    hashes: Hashes
    consistency_token: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., sha256: _Optional[str] = ..., duplicate: _Optional[bool] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ..., consistency_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("list", "id", "hashes", "meta", "created", "model", "embedding", "guard", "added_by", "consistency_token")
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
    GUARD_FIELD_NUMBER: _ClassVar[int]
    ADDED_BY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    hashes: Hashes
    meta: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    model: str
    embedding: bytes
    guard: GuardedEntry
    added_by: str
    consistency_token: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ..., meta: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., embedding: _Optional[bytes] = ..., guard: _Optional[_Union[GuardedEntry, _Mapping]] = ..., added_by: _Optional[str] = ..., consistency_token: _Optional[str] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("list", "page_size", "page_token", "q")
    LIST_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    list: str
    page_size: int
    page_token: str
    q: str
    def __init__(self, list: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., q: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveEntryRequest(_message.Message):
    __slots__ = ("list", "id")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RemoveEntryResponse(_message.Message):
    __slots__ = ("list", "id", "consistency_token")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    consistency_token: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., consistency_token: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("image", "lists", "meta", "top_k", "min_score", "request_id", "defer", "callback_url", "after")
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
    DEFER_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    image: Image
    lists: _containers.RepeatedScalarFieldContainer[str]
    meta: _containers.ScalarMap[str, str]
    top_k: int
    min_score: float
    request_id: str
    defer: bool
    callback_url: str
    after: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., lists: _Optional[_Iterable[str]] = ..., meta: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., request_id: _Optional[str] = ..., defer: _Optional[bool] = ..., callback_url: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class Downgrade(_message.Message):
    __slots__ = ("cause", "list", "id", "before", "after", "reason")
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    cause: str
    list: str
    id: str
    before: Decision
    after: Decision
    reason: str
    def __init__(self, cause: _Optional[str] = ..., list: _Optional[str] = ..., id: _Optional[str] = ..., before: _Optional[_Union[Decision, str]] = ..., after: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("exact_sha256", "pdq_distance", "embedding_similarity", "model", "signals", "exact_md5", "pdq_view", "embedding_view")
    EXACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PDQ_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    EXACT_MD5_FIELD_NUMBER: _ClassVar[int]
    PDQ_VIEW_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_VIEW_FIELD_NUMBER: _ClassVar[int]
    exact_sha256: bool
    pdq_distance: int
    embedding_similarity: float
    model: str
    signals: _containers.RepeatedScalarFieldContainer[str]
    exact_md5: bool
    pdq_view: View
    embedding_view: View
    def __init__(self, exact_sha256: _Optional[bool] = ..., pdq_distance: _Optional[int] = ..., embedding_similarity: _Optional[float] = ..., model: _Optional[str] = ..., signals: _Optional[_Iterable[str]] = ..., exact_md5: _Optional[bool] = ..., pdq_view: _Optional[_Union[View, _Mapping]] = ..., embedding_view: _Optional[_Union[View, _Mapping]] = ...) -> None: ...

class View(_message.Message):
    __slots__ = ("kind", "box", "frame")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    box: Box
    frame: int
    def __init__(self, kind: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., frame: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("list", "id", "meta", "score", "evidence", "decision", "list_kind", "guarded")
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
    LIST_KIND_FIELD_NUMBER: _ClassVar[int]
    GUARDED_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    meta: _containers.ScalarMap[str, str]
    score: float
    evidence: Evidence
    decision: Decision
    list_kind: str
    guarded: bool
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., score: _Optional[float] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ..., list_kind: _Optional[str] = ..., guarded: _Optional[bool] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("id", "request", "sha256", "decision", "suggested_actions", "matches", "meta", "hashes", "status", "downgrades")
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
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADES_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: RequestInfo
    sha256: str
    decision: Decision
    suggested_actions: SuggestedActions
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    meta: _containers.ScalarMap[str, str]
    hashes: Hashes
    status: CheckStatus
    downgrades: _containers.RepeatedCompositeFieldContainer[Downgrade]
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[RequestInfo, _Mapping]] = ..., sha256: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., suggested_actions: _Optional[_Union[SuggestedActions, _Mapping]] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., meta: _Optional[_Mapping[str, str]] = ..., hashes: _Optional[_Union[Hashes, _Mapping]] = ..., status: _Optional[_Union[CheckStatus, str]] = ..., downgrades: _Optional[_Iterable[_Union[Downgrade, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("id", "name", "role", "lists", "created", "created_by", "revoked", "consistency_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    lists: _containers.RepeatedScalarFieldContainer[str]
    created: _timestamp_pb2.Timestamp
    created_by: str
    revoked: _timestamp_pb2.Timestamp
    consistency_token: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., lists: _Optional[_Iterable[str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., revoked: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consistency_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("key", "secret", "consistency_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    secret: str
    consistency_token: str
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., secret: _Optional[str] = ..., consistency_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("results", "consistency_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddEntriesResult]
    consistency_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[AddEntriesResult, _Mapping]]] = ..., consistency_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("lists", "pdq", "pdq_quality", "md5", "sha256", "meta", "top_k", "min_score", "request_id", "after")
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
    AFTER_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedScalarFieldContainer[str]
    pdq: str
    pdq_quality: int
    md5: str
    sha256: str
    meta: _containers.ScalarMap[str, str]
    top_k: int
    min_score: float
    request_id: str
    after: str
    def __init__(self, lists: _Optional[_Iterable[str]] = ..., pdq: _Optional[str] = ..., pdq_quality: _Optional[int] = ..., md5: _Optional[str] = ..., sha256: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., request_id: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class GetCheckRequest(_message.Message):
    __slots__ = ("id", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("url", "state", "attempts", "last_error", "last_status", "next_attempt", "delivered")
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    url: str
    state: DeliveryState
    attempts: int
    last_error: str
    last_status: int
    next_attempt: _timestamp_pb2.Timestamp
    delivered: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., last_status: _Optional[int] = ..., next_attempt: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivered: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckRecord(_message.Message):
    __slots__ = ("id", "status", "result", "error", "submitted", "completed", "expires", "delivery", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: CheckStatus
    result: CheckResponse
    error: ItemError
    submitted: _timestamp_pb2.Timestamp
    completed: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    delivery: WebhookDelivery
    owner: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[CheckStatus, str]] = ..., result: _Optional[_Union[CheckResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., submitted: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivery: _Optional[_Union[WebhookDelivery, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class ListChecksRequest(_message.Message):
    __slots__ = ("decision", "page_size", "page_token", "owner")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    page_size: int
    page_token: str
    owner: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListChecksResponse(_message.Message):
    __slots__ = ("checks", "next_page_token")
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[CheckRecord]
    next_page_token: str
    def __init__(self, checks: _Optional[_Iterable[_Union[CheckRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCheckActivityRequest(_message.Message):
    __slots__ = ("list", "hours")
    LIST_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    list: str
    hours: int
    def __init__(self, list: _Optional[str] = ..., hours: _Optional[int] = ...) -> None: ...

class HourlyChecks(_message.Message):
    __slots__ = ("start", "counts")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    counts: CheckCounts
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., counts: _Optional[_Union[CheckCounts, _Mapping]] = ...) -> None: ...

class GetCheckActivityResponse(_message.Message):
    __slots__ = ("hours",)
    HOURS_FIELD_NUMBER: _ClassVar[int]
    hours: _containers.RepeatedCompositeFieldContainer[HourlyChecks]
    def __init__(self, hours: _Optional[_Iterable[_Union[HourlyChecks, _Mapping]]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("check_id", "entry_id", "verdict", "note", "list", "owner")
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    check_id: str
    entry_id: str
    verdict: Verdict
    note: str
    list: str
    owner: str
    def __init__(self, check_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., note: _Optional[str] = ..., list: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("time", "key_id", "check_id", "list", "entry_id", "verdict", "note", "score", "decision")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    key_id: str
    check_id: str
    list: str
    entry_id: str
    verdict: Verdict
    note: str
    score: float
    decision: Decision
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., check_id: _Optional[str] = ..., list: _Optional[str] = ..., entry_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., note: _Optional[str] = ..., score: _Optional[float] = ..., decision: _Optional[_Union[Decision, str]] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
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

class ListFeedbackResponse(_message.Message):
    __slots__ = ("feedback", "next_page_token")
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[Feedback]
    next_page_token: str
    def __init__(self, feedback: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("list", "apply")
    LIST_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    list: str
    apply: bool
    def __init__(self, list: _Optional[str] = ..., apply: _Optional[bool] = ...) -> None: ...

class ThresholdAdvice(_message.Message):
    __slots__ = ("current", "recommended", "errors_avoided", "errors_left", "confirmed_affected", "checks_affected")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_AVOIDED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_LEFT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    current: float
    recommended: float
    errors_avoided: int
    errors_left: int
    confirmed_affected: int
    checks_affected: int
    def __init__(self, current: _Optional[float] = ..., recommended: _Optional[float] = ..., errors_avoided: _Optional[int] = ..., errors_left: _Optional[int] = ..., confirmed_affected: _Optional[int] = ..., checks_affected: _Optional[int] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ("list", "review", "reject", "checks_seen", "feedback_seen", "applied", "notes", "info")
    LIST_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    CHECKS_SEEN_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SEEN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    list: str
    review: ThresholdAdvice
    reject: ThresholdAdvice
    checks_seen: int
    feedback_seen: int
    applied: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    info: ListInfo
    def __init__(self, list: _Optional[str] = ..., review: _Optional[_Union[ThresholdAdvice, _Mapping]] = ..., reject: _Optional[_Union[ThresholdAdvice, _Mapping]] = ..., checks_seen: _Optional[int] = ..., feedback_seen: _Optional[int] = ..., applied: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ..., info: _Optional[_Union[ListInfo, _Mapping]] = ...) -> None: ...

class ConfirmEntryRequest(_message.Message):
    __slots__ = ("list", "id")
    LIST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    list: str
    id: str
    def __init__(self, list: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetWebhookSecretRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWebhookSecretResponse(_message.Message):
    __slots__ = ("secret",)
    SECRET_FIELD_NUMBER: _ClassVar[int]
    secret: str
    def __init__(self, secret: _Optional[str] = ...) -> None: ...
