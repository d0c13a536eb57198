"""The /v1 JSON API: each route authenticates, converts, calls one operation and converts back.

Most routes transcode a gRPC method, as the `google.api.http` options in the proto name them: the
path's variables, the query (for GET and DELETE) and the JSON body fill the method's request message
(protobuf's JSON mapping: either spelling of a field name, int64 as text, enums by name), the servicer's
own conversions (`server.messages`) turn it into what the operation takes, and the reply message goes
back as protobuf's JSON mapping (lowerCamelCase, every field shown). Adding a picture and checking one
also take multipart/form-data; importing and exporting hash list files take and give files.
Each route is declared once (`ENDPOINTS`): the router, the OpenAPI document and the tests read the same
declarations.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from lookalike.client.errors import InvalidArgument, LookalikeError, ResourceExhausted
from lookalike.client.hashfiles import (
    EXPORT_FORMATS,
    FORMATS,
    JSONL,
    PDQ_CSV,
    PDQ_HASHES,
    BadLine,
    CsvColumns,
    detect_format,
    jsonl_record,
    read_entries,
)
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.stub import IMPORT_BATCH
from lookalike.client.types import Entry
from lookalike.server import messages
from lookalike.server.auth import Caller
from lookalike.server.errors import bounded, reported
from lookalike.server.http import auth
from lookalike.server.http.context import HttpContext
from lookalike.server.http.errors import error_response, request_too_large
from lookalike.server.observability import CallNotes, record_call
from lookalike.server.operations import Operations
from lookalike.server.records import AddOutcome, EntryRecord, validate_lists_named

JSON_MEDIA = "application/json"
MULTIPART_MEDIA = "multipart/form-data"
FORM_PART_BYTES = 64 * 1024
"""Largest text field of a multipart form (a meta value, a callback URL); pictures and files are file parts."""
IMPORT_ERRORS_SHOWN = 1000
"""Bad lines an import's reply lists one by one; `failed` counts them all."""
EXPORT_MEDIA = {JSONL: "application/x-ndjson", PDQ_CSV: "text/csv", PDQ_HASHES: "text/plain"}
EXPORT_SUFFIX = {JSONL: "jsonl", PDQ_CSV: "csv", PDQ_HASHES: "txt"}


@dataclass(frozen=True)
class FormField:
    """A field of a multipart form a route takes instead of JSON (for the OpenAPI document)."""

    name: str
    description: str
    type: str = "string"
    """JSON Schema type of the value; "file" for a file part; "array" for a repeatable field."""


Handler = Callable[[Request, "Endpoint", HttpContext, CallNotes], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route: the operation it calls (its gRPC method's name: the log's and metrics' method label,
    the OpenAPI operationId), its verb and path, and how its request and reply are shaped."""

    rpc: str
    verb: str
    path: str
    summary: str
    request: type[Message] | None = None
    """The message the path, query and body fill (the gRPC method's request)."""
    body: str | None = None
    """What a JSON body fills: "*" the whole request, a field name that field; None: no body (query instead)."""
    path_fields: Mapping[str, str] = field(default_factory=dict)
    """Path variable → request field, where their names differ."""
    reply: type[Message] | None = None
    call: Callable[[Operations, Caller, Any], Message] | None = None
    """The operation, from the caller and the filled request message to the reply message."""
    form: tuple[FormField, ...] = ()
    """Multipart fields taken instead of a JSON body (empty: JSON only)."""
    handler: Handler | None = None
    """A route that does more than transcode (files in and out)."""
    admin: bool = False
    """Admin keys only (documentation; the operations decide)."""

    @property
    def variables(self) -> list[str]:
        return [part[1:-1] for part in self.path.replace(":", "/").split("/") if part.startswith("{")]

    def field_of(self, variable: str) -> str:
        return self.path_fields.get(variable, variable)


# Requests -------------------------------------------------------------------------------


async def _bounded_stream(request: Request, limit: int) -> AsyncGenerator[bytes]:
    """The body's chunks, RESOURCE_EXHAUSTED (413) past `limit` bytes: refused by its Content-Length before
    any is read, else as soon as the count passes the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise request_too_large(limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise request_too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _bounded_stream(request, limit)])


async def read_form(request: Request, limit: int, files: int) -> FormData:
    """A multipart form, read within `limit` bytes: file parts spill to disk past 1 MiB, text parts are small."""
    parser = MultiPartParser(
        request.headers,
        _bounded_stream(request, limit),
        max_files=files,
        max_fields=1000,
        max_part_size=FORM_PART_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise InvalidArgument(f"the multipart body cannot be read: {error.message}", "MULTIPART_MALFORMED") from None
    except KeyError:  # no Content-Type parameters at all
        raise InvalidArgument(
            "the multipart body has no boundary: send Content-Type multipart/form-data", "MULTIPART_MALFORMED"
        ) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == JSON_MEDIA or media.endswith("+json")


def _json_object(data: bytes) -> dict[str, Any]:
    if not data.strip():
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"the body is not valid JSON: {error}", "JSON_MALFORMED") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the body must be a JSON object, not {type(value).__name__}", "JSON_NOT_OBJECT")
    return value


def _field_names(descriptor: Any) -> dict[str, FieldDescriptor]:
    """Fields by both the spellings protobuf's JSON parser accepts (proto name and lowerCamelCase)."""
    names: dict[str, FieldDescriptor] = {}
    for item in descriptor.fields:
        names[item.name] = item
        names[item.json_name] = item
    return names


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _text_value(item: FieldDescriptor, name: str, text: str) -> Any:
    """A query or form value as protobuf's JSON parser takes it: booleans from words, the rest as text
    (numbers, timestamps and enum names are parsed, and refused with a message, by protobuf)."""
    if item.type == FieldDescriptor.TYPE_BOOL:
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise InvalidArgument(f"{name} must be true or false, got {text!r}", "VALUE_INVALID")
    return text


def _fill[M: Message](message: M, data: dict[str, Any]) -> M:
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as error:
        raise InvalidArgument(
            f"the request does not fit {message.DESCRIPTOR.name}: {error}", "REQUEST_INVALID"
        ) from None
    except (ValueError, TypeError, RecursionError) as error:  # values protobuf's parser does not catch itself
        raise InvalidArgument(
            f"the request does not fit {message.DESCRIPTOR.name}: {error}", "REQUEST_INVALID"
        ) from None
    return message


def _path_values(request: Request, endpoint: Endpoint) -> dict[str, str]:
    return {endpoint.field_of(name): str(value) for name, value in request.path_params.items()}


def _query_values(request: Request, endpoint: Endpoint, fields: dict[str, FieldDescriptor]) -> dict[str, Any]:
    """Query parameters as request fields: only a route without a body takes them (every field not in its path)."""
    values: dict[str, Any] = {}
    path_fields = {endpoint.field_of(v) for v in endpoint.variables}
    for name in request.query_params:
        item = fields.get(name) if endpoint.body is None else None
        if item is None or item.name in path_fields:
            known = (
                sorted({f.name for f in fields.values() if f.name not in path_fields}) if endpoint.body is None else []
            )
            hint = f"this path takes {', '.join(known)}" if known else "this path takes no query parameters"
            raise InvalidArgument(f"unknown query parameter {name!r}: {hint}", "QUERY_PARAMETER_UNKNOWN")
        texts = request.query_params.getlist(name)
        if item.is_repeated:
            values[item.name] = [_text_value(item, name, t) for text in texts for t in text.split(",") if t]
        elif len(texts) > 1:
            raise InvalidArgument(
                f"query parameter {name!r} is given {len(texts)} times; give it once", "VALUE_INVALID"
            )
        else:
            values[item.name] = _text_value(item, name, texts[0])
    return values


def _body_values(endpoint: Endpoint, body: dict[str, Any], fields: dict[str, FieldDescriptor]) -> dict[str, Any]:
    """The JSON body placed where the route's `body` says; it may not set what the path names."""
    if endpoint.body is None or endpoint.body != "*":
        return {endpoint.body: body} if endpoint.body else {}
    for variable in endpoint.variables:
        target = fields.get(endpoint.field_of(variable))
        if target is not None and (target.name in body or target.json_name in body):
            raise InvalidArgument(
                f"{target.name} comes from the path ({{{variable}}}); leave it out of the body", "FIELD_IN_PATH"
            )
    return body


def _form_values(form: FormData, message: Message) -> dict[str, Any]:
    """A multipart form as request fields: the file part `image` is the picture, `meta.KEY` fields the meta,
    other fields by name (a repeated one given several times or comma-separated)."""
    fields = _field_names(message.DESCRIPTOR)
    values: dict[str, Any] = {}
    meta: dict[str, str] = {}
    for name, value in form.multi_items():
        if name == "image":
            if not isinstance(value, UploadFile):
                raise InvalidArgument("image must be a file part (a picture), not a text field", "IMAGE_NOT_FILE")
            continue  # read by the caller, without a copy through JSON
        if isinstance(value, UploadFile):
            raise InvalidArgument(f"only the picture is a file part (field image), not {name!r}", "FORM_FIELD_UNKNOWN")
        if name.startswith("meta.") and "meta" in fields:
            meta[name.removeprefix("meta.")] = value
            continue
        item = fields.get(name)
        if item is None or item.name in ("image", "meta") or item.message_type is not None:
            known = sorted(
                f.name for f in message.DESCRIPTOR.fields if f.name not in ("image", "meta") and f.message_type is None
            )
            raise InvalidArgument(
                f"unknown form field {name!r}: send image (a file), meta.KEY fields and {', '.join(known)}",
                "FORM_FIELD_UNKNOWN",
            )
        if item.is_repeated:
            values.setdefault(item.name, []).extend(_text_value(item, name, t) for t in value.split(",") if t)
        elif item.name in values:
            raise InvalidArgument(f"form field {name!r} is given twice; give it once", "VALUE_INVALID")
        else:
            values[item.name] = _text_value(item, name, value)
    if meta:
        values["meta"] = meta
    return values


async def request_message(request: Request, endpoint: Endpoint, context: HttpContext) -> Message:
    """The route's request message, filled from the path, the query and the body (JSON or multipart)."""
    assert endpoint.request is not None
    message = endpoint.request()
    fields = _field_names(message.DESCRIPTOR)
    values = _query_values(request, endpoint, fields)
    image: bytes | None = None
    if endpoint.body is not None:
        media = media_type(request)
        limit = context.config.max_request_bytes
        if media == MULTIPART_MEDIA and endpoint.form:
            form = await read_form(request, limit, files=1)
            try:
                values |= _form_values(form, message)
                upload = form.get("image")
                if isinstance(upload, UploadFile):
                    image = await upload.read()
            finally:
                await form.close()
        else:
            data = await read_body(request, limit)
            if data.strip() and not _is_json(media):
                accepted = "application/json" + (" or multipart/form-data" if endpoint.form else "")
                raise InvalidArgument(
                    f"Content-Type {media or 'none'} is not accepted here: send {accepted}", "CONTENT_TYPE_UNSUPPORTED"
                )
            values |= _body_values(endpoint, _json_object(data), fields)
    values |= _path_values(request, endpoint)
    _fill(message, values)
    if image is not None:
        message.image.data = image  # type: ignore[attr-defined]
    return message


def json_reply(message: Message, status: int = 200) -> JSONResponse:
    """A reply message as protobuf's JSON mapping, every field shown (unset messages and optionals left out)."""
    return JSONResponse(json_format.MessageToDict(message, always_print_fields_with_no_presence=True), status)


# Routes that transcode one gRPC method ----------------------------------------------------------


async def transcode(request: Request, endpoint: Endpoint, context: HttpContext, notes: CallNotes) -> Response:
    caller = auth.caller(request, context.access)
    message = await request_message(request, endpoint, context)
    notes.saw_request(message)
    call = endpoint.call
    assert call is not None
    reply = await context.run(lambda: call(context.operations, caller, message))
    notes.saw_response(reply)
    return json_reply(reply)


async def add_entry(request: Request, endpoint: Endpoint, context: HttpContext, notes: CallNotes) -> Response:
    """A picture (multipart, or JSON with `image`), or an entry given by its hashes (JSON without `image`)."""
    if media_type(request) == MULTIPART_MEDIA:
        return await transcode(request, endpoint, context, notes)
    caller = auth.caller(request, context.access)
    body = _json_object(await read_body(request, context.config.max_request_bytes))
    if not _is_json(media_type(request)) and body:
        raise InvalidArgument(
            "send the picture as multipart/form-data or JSON (application/json)", "CONTENT_TYPE_UNSUPPORTED"
        )
    if request.query_params:
        raise InvalidArgument("this path takes no query parameters", "QUERY_PARAMETER_UNKNOWN")
    list_name = str(request.path_params["list"])
    reply: Message
    if "image" in body:
        fields = _field_names(pb.AddEntryRequest.DESCRIPTOR)
        picture = _fill(pb.AddEntryRequest(), {**_body_values(endpoint, body, fields), "list": list_name})
        notes.saw_request(picture)
        reply = await context.run(lambda: _add_entry(context.operations, caller, picture))
    else:
        notes.method = "AddHash"
        hashes = _fill(pb.AddHashRequest(), {"list": list_name, "entry": body})
        notes.saw_request(hashes)
        reply = await context.run(lambda: _add_hash(context.operations, caller, hashes))
    return json_reply(reply)


def _add_entry(ops: Operations, caller: Caller, request: pb.AddEntryRequest) -> pb.AddEntryResponse:
    outcome = ops.entries.add(caller, request.list, messages.new_picture(request))
    return messages.add_response(request.list, outcome, ops.consistency_token())


def _add_hash(ops: Operations, caller: Caller, request: pb.AddHashRequest) -> pb.AddEntryResponse:
    outcome = ops.entries.add_hash(caller, request.list, messages.hash_add(request.entry))
    return messages.add_response(request.list, outcome, ops.consistency_token())


def _stamped[Reply: pb.ListInfo | pb.Entry | pb.KeyInfo](ops: Operations, reply: Reply) -> Reply:
    """A write's reply with the consistency token that covers it."""
    reply.consistency_token = ops.consistency_token()
    return reply


def _check(ops: Operations, caller: Caller, request: pb.CheckRequest) -> pb.CheckResponse:
    validate_lists_named(request.lists)
    return messages.check_answer(ops.checks.check(caller, messages.new_check(request)))


def _check_hashes(ops: Operations, caller: Caller, request: pb.CheckHashesRequest) -> pb.CheckResponse:
    validate_lists_named(request.lists)
    return messages.check_response(ops.checks.check_hashes(caller, messages.hash_check(request)))


def _create_key(ops: Operations, caller: Caller, request: pb.CreateKeyRequest) -> pb.CreateKeyResponse:
    validate_lists_named(request.lists)
    record, secret = ops.keys.create(caller, request.role, list(request.lists), request.name)
    return pb.CreateKeyResponse(key=messages.key_info(record), secret=secret, consistency_token=ops.consistency_token())


def _audit(ops: Operations, caller: Caller, request: pb.ListAuditRequest) -> pb.ListAuditResponse:
    records, next_token = ops.keys.audit(caller, messages.page_request(request))
    return pb.ListAuditResponse(records=[messages.audit_message(r) for r in records], next_page_token=next_token)


def _feedback(ops: Operations, caller: Caller, request: pb.ListFeedbackRequest) -> pb.ListFeedbackResponse:
    records, next_token = ops.feedback.page(caller, messages.page_request(request))
    return pb.ListFeedbackResponse(feedback=[messages.feedback_message(r) for r in records], next_page_token=next_token)


def _delete_list(ops: Operations, caller: Caller, request: pb.DeleteListRequest) -> pb.DeleteListResponse:
    record = ops.lists.delete(caller, request.name)
    token = ops.consistency_token()
    return pb.DeleteListResponse(name=record.name, entries_deleted=record.entry_count, consistency_token=token)


def _remove_entry(ops: Operations, caller: Caller, request: pb.RemoveEntryRequest) -> pb.RemoveEntryResponse:
    entry = ops.entries.remove(caller, request.list, request.id)
    return pb.RemoveEntryResponse(list=request.list, id=entry.id, consistency_token=ops.consistency_token())


# Files: import and export --------------------------------------------------------------------


def _import_lines(data: bytes) -> Iterator[str]:
    # surrogateescape: a line that is not UTF-8 is reported by its number, like any other bad line
    return iter(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))


def _import(
    ops: Operations, caller: Caller, list_name: str, data: bytes, given: str | None, filename: str
) -> dict[str, Any]:
    """Store a hash list file's entries in batches, each in one transaction; bad lines are reported and skipped."""
    bulk = ops.entries.bulk_add(caller)
    file_format, lines = detect_format(_import_lines(data), given, filename)
    summary: dict[str, Any] = {"list": list_name, "format": file_format, "added": 0, "duplicates": 0, "failed": 0}
    errors: list[dict[str, Any]] = []

    def failed(line: int, error: LookalikeError | str) -> None:
        summary["failed"] += 1
        if len(errors) < IMPORT_ERRORS_SHOWN:
            if isinstance(error, LookalikeError):
                shown = {"error": bounded(str(error)), "code": error.code, "reason": error.reason}
            else:
                shown = {"error": error, "code": "INVALID_ARGUMENT", "reason": "LINE_UNREADABLE"}
            errors.append({"line": line, **shown})

    def store(batch: list[tuple[int, pb.HashEntry]]) -> None:
        outcomes = bulk.add_hashes(list_name, [messages.hash_add(entry) for _, entry in batch])
        for (line, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, AddOutcome):
                summary["duplicates" if outcome.duplicate else "added"] += 1
            else:
                failed(line, reported(outcome, "import line"))

    batch: list[tuple[int, pb.HashEntry]] = []
    for number, item in read_entries(lines, file_format):
        if isinstance(item, BadLine):
            failed(item.line, item.message)
            continue
        batch.append((number, item))
        if len(batch) == IMPORT_BATCH:
            store(batch)
            batch = []
    if batch:
        store(batch)
    errors.sort(key=lambda error: int(error["line"]))
    return {**summary, "errors": errors, "consistencyToken": ops.consistency_token()}


async def import_entries(request: Request, endpoint: Endpoint, context: HttpContext, notes: CallNotes) -> Response:
    """A hash list file as the multipart file part `file` (with an optional `format` field), or as the body
    itself (`?format=` optional); any layout `lookalike import` reads, recognised as it recognises them."""
    caller = auth.caller(request, context.access)
    list_name = str(request.path_params["list"])
    notes.saw_request(pb.ImportEntriesRequest(list=list_name))
    notes.items = 0
    limit = context.config.max_request_bytes
    given = request.query_params.get("format") or None
    unknown = sorted(set(request.query_params) - {"format"})
    if unknown:
        raise InvalidArgument(
            f"unknown query parameter {unknown[0]!r}: this path takes format", "QUERY_PARAMETER_UNKNOWN"
        )
    filename = ""
    if media_type(request) == MULTIPART_MEDIA:
        form = await read_form(request, limit, files=1)
        try:
            unexpected = sorted(set(form.keys()) - {"file", "format"})
            if unexpected:
                raise InvalidArgument(
                    f"unknown form field {unexpected[0]!r}: send file and format", "FORM_FIELD_UNKNOWN"
                )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidArgument("send the hash list as the file part `file`", "FILE_MISSING")
            filename = upload.filename or ""
            data = await upload.read()
            format_field = form.get("format")
            given = (format_field if isinstance(format_field, str) else None) or given
        finally:
            await form.close()
    else:
        data = await read_body(request, limit)
    if given is not None and given not in FORMATS:
        raise InvalidArgument(f"format {given!r} is unknown; use one of {', '.join(FORMATS)}", "FORMAT_UNKNOWN")
    summary = await context.run(lambda: _import(context.operations, caller, list_name, data, given, filename))
    notes.items = summary["added"] + summary["duplicates"] + summary["failed"]
    return JSONResponse(summary)


def _entries(list_name: str, page: list[tuple[EntryRecord, bytes | None]]) -> list[Entry]:
    return [Entry.from_pb(messages.entry_message(list_name, entry, vector)) for entry, vector in page]


def _export_chunks(
    ops: Operations, caller: Caller, list_name: str, file_format: str, with_embeddings: bool, header: bool
) -> Generator[str]:
    """The export as text, a page at a time. The first page is read before this returns, so a refusal
    (no such list, a key without the right) is an error status, not a broken stream. PDQ CSV reads the
    list twice: first for its columns (its header names every meta key), then for the rows."""
    pages = ops.entries.export(caller, list_name, with_embeddings and file_format == JSONL)
    first = next(pages, None)
    columns = None
    if file_format == PDQ_CSV:
        every = ops.entries.export(caller, list_name, False)
        columns = CsvColumns.of((e for page in every for e in _entries(list_name, page)), header=header)

    def chunks() -> Generator[str]:
        out = io.StringIO()
        if columns is not None:
            columns.write_header(out)
        for page in itertools.chain([] if first is None else [first], pages):
            for entry in _entries(list_name, page):
                if file_format == JSONL:
                    out.write(json.dumps(jsonl_record(entry), ensure_ascii=False) + "\n")
                elif columns is not None:
                    columns.write_row(out, entry)
                elif entry.hashes.pdq:
                    out.write(entry.hashes.pdq + "\n")
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        if first is None:
            yield out.getvalue()  # an empty list: the header alone

    return chunks()


class ClosingStream(StreamingResponse):
    """A streamed reply that runs `on_close` (with the call's status name) once it is over, whether it was
    sent whole, the client went away, or it failed midway: places it holds are given back for sure."""

    def __init__(self, content: AsyncIterator[bytes], on_close: list[Callable[[str], None]], **options: Any) -> None:
        super().__init__(content, **options)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        code = "OK"
        try:
            await super().__call__(scope, receive, send)
        except Exception as error:  # a failure midway cuts the stream short: the client sees it broken
            code = reported(error, "stream").code if not isinstance(error, ClientDisconnect) else "CANCELLED"
            raise
        finally:
            for close in self.on_close:
                close(code)


def _query_flag(request: Request, name: str, default: bool) -> bool:
    text = request.query_params.get(name)
    if text is None:
        return default
    if text.strip().lower() not in (*_TRUE, *_FALSE):
        raise InvalidArgument(f"{name} must be true or false, got {text!r}", "VALUE_INVALID")
    return text.strip().lower() in _TRUE


async def export_entries(request: Request, endpoint: Endpoint, context: HttpContext, notes: CallNotes) -> Response:
    """A list's entries as a file (`format`: jsonl, pdq-csv or pdq-hashes), streamed a page at a time; it holds
    one of the key's --max-streams-per-key places while it streams, as a gRPC export does."""
    caller = auth.caller(request, context.access)
    list_name = str(request.path_params["list"])
    notes.saw_request(pb.ExportEntriesRequest(list=list_name))
    unknown = sorted(set(request.query_params) - {"format", "with_embeddings", "header"})
    if unknown:
        raise InvalidArgument(
            f"unknown query parameter {unknown[0]!r}: this path takes format, with_embeddings and header",
            "QUERY_PARAMETER_UNKNOWN",
        )
    file_format = request.query_params.get("format") or JSONL
    if file_format not in EXPORT_FORMATS:
        raise InvalidArgument(
            f"format {file_format!r} cannot be exported; use one of {', '.join(EXPORT_FORMATS)}", "FORMAT_UNKNOWN"
        )
    with_embeddings = _query_flag(request, "with_embeddings", False)
    header = _query_flag(request, "header", True)
    if not context.streams.take(caller.key_id):
        raise ResourceExhausted(
            f"{caller} already has {context.streams.limit} streams open (--max-streams-per-key): wait for one to end",
            "STREAMS_PER_KEY",
        )
    try:
        chunks = await context.run(
            lambda: _export_chunks(context.operations, caller, list_name, file_format, with_embeddings, header)
        )
    except BaseException:
        context.streams.give_back(caller.key_id)
        raise

    async def body() -> AsyncIterator[bytes]:
        while (chunk := await context.run(lambda: next(chunks, None))) is not None:
            notes.items += 1
            yield chunk.encode()

    def close(_: str) -> None:
        chunks.close()
        context.streams.give_back(caller.key_id)

    filename = f"{list_name}.{EXPORT_SUFFIX[file_format]}"
    return ClosingStream(
        body(),
        [close],
        media_type=EXPORT_MEDIA[file_format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# The routes -------------------------------------------------------------------------------------

_IMAGE_FORM = (
    FormField(
        "image",
        "the picture: JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP or TIFF (an animation's other frames count)",
        "file",
    ),
    FormField("meta.KEY", "a meta value (one field per key, e.g. meta.case)"),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "ListLists",
        "GET",
        "/v1/lists",
        "The lists the caller may use, by name.",
        pb.ListListsRequest,
        reply=pb.ListListsResponse,
        call=lambda ops, caller, r: pb.ListListsResponse(
            lists=[messages.list_info(s) for s in ops.lists.visible(caller)]
        ),
    ),
    Endpoint(
        "CreateList",
        "POST",
        "/v1/lists",
        "Create a list.",
        pb.CreateListRequest,
        body="*",
        reply=pb.ListInfo,
        call=lambda ops, caller, r: _stamped(ops, messages.list_info(ops.lists.create(caller, messages.list_spec(r)))),
    ),
    Endpoint(
        "GetList",
        "GET",
        "/v1/lists/{list}",
        "A list's settings, size and flood-guarded entries.",
        pb.GetListRequest,
        path_fields={"list": "name"},
        reply=pb.ListInfo,
        call=lambda ops, caller, r: messages.list_info(ops.lists.get(caller, r.name)),
    ),
    Endpoint(
        "UpdateList",
        "PATCH",
        "/v1/lists/{list}",
        "Change a list's description, thresholds, dihedral matching, thumbnails or keypoints.",
        pb.UpdateListRequest,
        body="*",
        path_fields={"list": "name"},
        reply=pb.ListInfo,
        call=lambda ops, caller, r: _stamped(
            ops, messages.list_info(ops.lists.update(caller, messages.list_change(r)))
        ),
    ),
    Endpoint(
        "DeleteList",
        "DELETE",
        "/v1/lists/{list}",
        "Delete a list and its entries.",
        pb.DeleteListRequest,
        path_fields={"list": "name"},
        reply=pb.DeleteListResponse,
        call=_delete_list,
    ),
    Endpoint(
        "AddEntry",
        "POST",
        "/v1/lists/{list}/entries",
        "Add a picture (multipart/form-data, or JSON with image.url or image.base64), or an entry given by its "
        "hashes (JSON: pdq, pdq_quality, md5, sha256, meta, id).",
        pb.AddEntryRequest,
        body="*",
        reply=pb.AddEntryResponse,
        call=_add_entry,
        form=(*_IMAGE_FORM, FormField("id", "the entry's id (made when left out)")),
        handler=add_entry,
    ),
    Endpoint(
        "AddHash",
        "POST",
        "/v1/lists/{list}/entries:addHash",
        "Add an entry given by its hashes.",
        pb.AddHashRequest,
        body="entry",
        reply=pb.AddEntryResponse,
        call=_add_hash,
    ),
    Endpoint(
        "ListEntries",
        "GET",
        "/v1/lists/{list}/entries",
        "A list's entries, newest first, a page at a time; `q` finds entries by id, hash or meta value.",
        pb.ListEntriesRequest,
        reply=pb.ListEntriesResponse,
        call=lambda ops, caller, r: messages.entry_page(ops.entries.page(caller, r.list, messages.entry_query(r))),
    ),
    Endpoint(
        "GetEntry",
        "GET",
        "/v1/lists/{list}/entries/{id}",
        "One entry: its hashes, meta and flood guard.",
        pb.GetEntryRequest,
        reply=pb.Entry,
        call=lambda ops, caller, r: messages.listed_entry(ops.entries.get(caller, r.list, r.id)),
    ),
    Endpoint(
        "RemoveEntry",
        "DELETE",
        "/v1/lists/{list}/entries/{id}",
        "Remove an entry.",
        pb.RemoveEntryRequest,
        reply=pb.RemoveEntryResponse,
        call=_remove_entry,
    ),
    Endpoint(
        "ConfirmEntry",
        "POST",
        "/v1/lists/{list}/entries/{id}:confirm",
        "Lift an entry's flood guard: its present match rate is declared usual.",
        pb.ConfirmEntryRequest,
        body="*",
        reply=pb.Entry,
        admin=True,
        call=lambda ops, caller, r: _stamped(
            ops, messages.entry_message(r.list, ops.entries.confirm(caller, r.list, r.id))
        ),
    ),
    Endpoint(
        "ImportEntries",
        "POST",
        "/v1/lists/{list}/entries:import",
        "Import a hash list file (multipart part `file`, or the body itself): JSON lines, PDQ CSV, bare PDQ "
        "hashes and the other layouts `lookalike import` reads, recognised from the first lines.",
        handler=import_entries,
    ),
    Endpoint(
        "ExportEntries",
        "GET",
        "/v1/lists/{list}/entries:export",
        "Every entry of a list as a file, streamed: jsonl (lossless; with_embeddings adds them), pdq-csv "
        "(header=false: ThreatExchange's hash,quality,filename rows) or pdq-hashes.",
        handler=export_entries,
    ),
    Endpoint(
        "Calibrate",
        "POST",
        "/v1/lists/{list}:calibrate",
        "Thresholds that would have avoided the reported errors, and their cost; apply sets them.",
        pb.CalibrateRequest,
        body="*",
        reply=pb.CalibrateResponse,
        admin=True,
        call=lambda ops, caller, r: messages.calibration_message(ops.feedback.calibrate(caller, r.list, r.apply)),
    ),
    Endpoint(
        "Check",
        "POST",
        "/v1/check",
        "Check a picture (multipart/form-data, or JSON with image.url or image.base64) against lists.",
        pb.CheckRequest,
        body="*",
        reply=pb.CheckResponse,
        call=_check,
        form=(
            *_IMAGE_FORM,
            FormField(
                "lists", "lists to check against (repeat the field, or separate by commas; none: every list)", "array"
            ),
            FormField("top_k", "nearest entries to return even below the review threshold", "integer"),
            FormField("min_score", "return matches scoring at least this", "number"),
            FormField("request_id", "the check's id (made when left out)"),
            FormField("callback_url", "POST the result here, signed"),
            FormField("defer", "queue the check and answer at once with its id", "boolean"),
        ),
    ),
    Endpoint(
        "CheckHashes",
        "POST",
        "/v1/check:hashes",
        "Check hashes computed elsewhere against lists.",
        pb.CheckHashesRequest,
        body="*",
        reply=pb.CheckResponse,
        call=_check_hashes,
    ),
    Endpoint(
        "GetCheck",
        "GET",
        "/v1/checks/{id}",
        "A stored check: pending, or its result, and its webhook delivery (admins name another key's as owner).",
        pb.GetCheckRequest,
        reply=pb.CheckRecord,
        call=lambda ops, caller, r: messages.check_view(ops.checks.get(caller, r.id, messages.optional(r, "owner"))),
    ),
    Endpoint(
        "ListChecks",
        "GET",
        "/v1/checks",
        "Stored checks of one decision (e.g. REVIEW), newest first: the caller's own (an admin's: every key's, or "
        "the owner's it names).",
        pb.ListChecksRequest,
        reply=pb.ListChecksResponse,
        call=lambda ops, caller, r: messages.check_page(ops.checks.page(caller, messages.check_query(r))),
    ),
    Endpoint(
        "GetCheckActivity",
        "GET",
        "/v1/checks:activity",
        "Checks per hour by decision, oldest first: of one list, or of every check (admin).",
        pb.GetCheckActivityRequest,
        reply=pb.GetCheckActivityResponse,
        call=lambda ops, caller, r: messages.activity_message(ops.checks.activity(caller, r.list, r.hours)),
    ),
    Endpoint(
        "SubmitFeedback",
        "POST",
        "/v1/checks/{id}/feedback",
        "A verdict on one match of a stored check.",
        pb.SubmitFeedbackRequest,
        body="*",
        path_fields={"id": "check_id"},
        reply=pb.Feedback,
        call=lambda ops, caller, r: messages.feedback_message(
            ops.feedback.submit(caller, messages.feedback_submission(r))
        ),
    ),
    Endpoint(
        "ListFeedback",
        "GET",
        "/v1/feedback",
        "Feedback, oldest first, a page at a time.",
        pb.ListFeedbackRequest,
        reply=pb.ListFeedbackResponse,
        call=_feedback,
        admin=True,
    ),
    Endpoint(
        "ListKeys",
        "GET",
        "/v1/keys",
        "Every API key, revoked ones included (without secrets).",
        pb.ListKeysRequest,
        reply=pb.ListKeysResponse,
        admin=True,
        call=lambda ops, caller, r: pb.ListKeysResponse(keys=[messages.key_info(k) for k in ops.keys.all(caller)]),
    ),
    Endpoint(
        "CreateKey",
        "POST",
        "/v1/keys",
        "Create an API key; its secret is in this reply only.",
        pb.CreateKeyRequest,
        body="*",
        reply=pb.CreateKeyResponse,
        call=_create_key,
        admin=True,
    ),
    Endpoint(
        "RevokeKey",
        "POST",
        "/v1/keys/{id}:revoke",
        "Revoke an API key (refused at once, even mid-stream).",
        pb.RevokeKeyRequest,
        body="*",
        reply=pb.KeyInfo,
        admin=True,
        call=lambda ops, caller, r: _stamped(ops, messages.key_info(ops.keys.revoke(caller, r.id))),
    ),
    Endpoint(
        "ListAudit",
        "GET",
        "/v1/audit",
        "Every change to lists, entries and keys, oldest first, a page at a time.",
        pb.ListAuditRequest,
        reply=pb.ListAuditResponse,
        call=_audit,
        admin=True,
    ),
    Endpoint(
        "GetWebhookSecret",
        "GET",
        "/v1/webhooks/secret",
        "The secret webhook signatures are made with.",
        pb.GetWebhookSecretRequest,
        reply=pb.GetWebhookSecretResponse,
        admin=True,
        call=lambda ops, caller, r: pb.GetWebhookSecretResponse(secret=ops.checks.webhook_secret(caller)),
    ),
)


def _route(endpoint: Endpoint, context: HttpContext) -> Route:
    handle = endpoint.handler or transcode

    async def serve(request: Request) -> Response:
        """Admission, readiness, the handler; every outcome counted, timed and logged once (a streamed
        reply's when its stream is over)."""
        notes = CallNotes(endpoint.rpc, request_id=request.headers.get("x-request-id", ""))
        context.metrics.in_flight.inc()
        admitted = False
        code = "CANCELLED"  # unless the handler ends: the client went away meanwhile
        response: Response | None = None
        try:
            context.admit()
            admitted = True
            context.require_ready()
            response = await handle(request, endpoint, context, notes)
            code = "OK"
        except Exception as error:  # noqa: BLE001 - every failure becomes a status and an error body
            shown = reported(error, endpoint.rpc)
            code = shown.code
            response = error_response(shown, endpoint.rpc)
        finally:
            if isinstance(response, ClosingStream):
                response.on_close.append(lambda streamed: _finish(context, notes, streamed, admitted))
            else:
                _finish(context, notes, code, admitted)
        return response

    return Route(endpoint.path, serve, methods=[endpoint.verb], name=endpoint.rpc)


def _finish(context: HttpContext, notes: CallNotes, code: str, admitted: bool) -> None:
    if admitted:
        context.calls.leave()
    context.metrics.in_flight.dec()
    record_call(context.metrics, notes, code)


def routes(context: HttpContext) -> list[BaseRoute]:
    return [_route(endpoint, context) for endpoint in ENDPOINTS]
