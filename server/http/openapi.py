"""The OpenAPI 3.1 document of the /v1 API, generated from the code, and a docs page rendered from it.

Paths, verbs, parameters and bodies come from the routes' own declarations (`api.ENDPOINTS`); the
schemas of requests and replies from the proto's message descriptors, following protobuf's JSON mapping:
lowerCamelCase names in replies (requests take either spelling; the schemas show the proto names, as the
examples do), 64-bit integers as strings, enums by name, Timestamps as RFC 3339 text, bytes as base64,
maps as objects. Nothing here is kept by hand, so the document cannot drift from what is served.
"""

from __future__ import annotations

import html
import json
from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from lookalike.client.hashfiles import EXPORT_FORMATS, FORMATS
from lookalike.server.http.api import ENDPOINTS, FORM_PART_BYTES, IMPORT_ERRORS_SHOWN, Endpoint
from lookalike.server.http.errors import ERROR_INFO_TYPE

OPENAPI_PATH = "/v1/openapi.json"
DOCS_PATH = "/v1/docs"
TITLE = "Lookalike HTTP API"
VERSION = "v1"

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
}
_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
)
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
}


class _Schemas:
    """JSON Schemas of proto messages: replies as named components (lowerCamelCase), request bodies inline
    (proto field names)."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def reply(self, descriptor: Any) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.name
        if name not in self.components:
            self.components[name] = {}  # placed first: a message that holds itself refers to itself
            self.components[name] = self._object(descriptor, reply=True, leave_out=())
        return {"$ref": f"#/components/schemas/{name}"}

    def request(self, descriptor: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        return self._object(descriptor, reply=False, leave_out=leave_out)

    def _object(self, descriptor: Any, reply: bool, leave_out: tuple[str, ...]) -> dict[str, Any]:
        properties = {
            (item.json_name if reply else item.name): self.field(item, reply)
            for item in descriptor.fields
            if item.name not in leave_out
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]  # `optional` fields are synthetic ones
        if oneofs:
            for oneof in oneofs:
                names = [item.json_name if reply else item.name for item in oneof.fields]
                schema.setdefault("description", "")
                schema["description"] += f"At most one of: {', '.join(names)}. "
            schema["maxProperties"] = len(properties) - sum(len(o.fields) - 1 for o in oneofs)
        return schema

    def field(self, item: Any, reply: bool) -> dict[str, Any]:
        if item.message_type is not None and item.message_type.GetOptions().map_entry:
            value = item.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value, reply)}
        single = self.single(item, reply)
        if item.is_repeated:
            return {"type": "array", "items": single}
        return single

    def single(self, item: Any, reply: bool) -> dict[str, Any]:
        if item.message_type is not None:
            return self.reply(item.message_type) if reply else self.request(item.message_type)
        if item.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in item.enum_type.values]}
        if item.type in _INT64:
            # protobuf's JSON prints 64-bit integers as text (JavaScript numbers lose their last digits)
            return (
                {"type": "string", "format": "int64"} if reply else {"type": ["string", "integer"], "format": "int64"}
            )
        return dict(_SCALARS[item.type])


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message", "reason", "details"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status"},
                "status": {"type": "string", "description": "the canonical code, as gRPC reports it"},
                "message": {"type": "string"},
                "reason": {"type": "string", "description": "UPPER_SNAKE, for programs to act on"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "@type": {"const": ERROR_INFO_TYPE},
                            "reason": {"type": "string"},
                            "domain": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}

_IMPORT_SUMMARY = {
    "type": "object",
    "required": ["list", "format", "added", "duplicates", "failed", "errors", "consistencyToken"],
    "properties": {
        "list": {"type": "string"},
        "format": {"type": "string", "enum": list(FORMATS)},
        "added": {"type": "integer"},
        "duplicates": {"type": "integer", "description": "entries already on the list"},
        "failed": {"type": "integer"},
        "consistencyToken": {"type": "string", "description": "pass as a check's `after` to read these entries"},
        "errors": {
            "type": "array",
            "description": f"the first {IMPORT_ERRORS_SHOWN} bad lines, by line number",
            "items": {
                "type": "object",
                "required": ["line", "error", "code", "reason"],
                "properties": {
                    "line": {"type": "integer"},
                    "error": {"type": "string"},
                    "code": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}


def _parameter(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        parameter["description"] = description
    if schema.get("type") == "array":
        parameter |= {"style": "form", "explode": True}
    return parameter


def _path_fields(endpoint: Endpoint) -> tuple[str, ...]:
    return tuple(endpoint.field_of(variable) for variable in endpoint.variables)


def _parameters(endpoint: Endpoint, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters = [_parameter(v, "path", {"type": "string", "minLength": 1}) for v in endpoint.variables]
    if endpoint.rpc == "ImportEntries":
        parameters.append(_parameter("format", "query", {"type": "string", "enum": list(FORMATS)}, "else recognised"))
    elif endpoint.rpc == "ExportEntries":
        parameters += [
            _parameter("format", "query", {"type": "string", "enum": list(EXPORT_FORMATS), "default": "jsonl"}),
            _parameter("with_embeddings", "query", {"type": "boolean", "default": False}, "jsonl only"),
            _parameter("header", "query", {"type": "boolean", "default": True}, "pdq-csv only"),
        ]
    elif endpoint.request is not None and endpoint.body is None:
        taken = _path_fields(endpoint)
        for item in endpoint.request.DESCRIPTOR.fields:
            if item.name not in taken:
                parameters.append(_parameter(item.name, "query", schemas.field(item, reply=False)))
    return parameters


def _form_schema(endpoint: Endpoint) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for item in endpoint.form:
        if item.type == "file":
            properties[item.name] = {"type": "string", "contentMediaType": "application/octet-stream"}
        elif item.type == "array":
            properties[item.name] = {"type": "array", "items": {"type": "string"}}
        else:
            properties[item.name] = {"type": item.type}
        properties[item.name]["description"] = item.description
    meta = properties.pop("meta.KEY")
    return {
        "type": "object",
        "required": ["image"],
        "properties": properties,
        "patternProperties": {r"^meta\.": {"type": "string", "maxLength": FORM_PART_BYTES}},
        "additionalProperties": False,
        "description": f"meta.KEY: {meta['description']}",
    }


def _request_body(endpoint: Endpoint, schemas: _Schemas) -> dict[str, Any] | None:
    content: dict[str, Any] = {}
    if endpoint.rpc == "ImportEntries":
        file_part = {"type": "string", "contentMediaType": "application/octet-stream"}
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": file_part, "format": {"type": "string", "enum": list(FORMATS)}},
                "additionalProperties": False,
            }
        }
        content["text/plain"] = {"schema": {"type": "string"}}
        return {"required": True, "content": content}
    if endpoint.request is None or endpoint.body is None:
        return None
    descriptor = endpoint.request.DESCRIPTOR
    if endpoint.body == "*":
        schema = schemas.request(descriptor, leave_out=_path_fields(endpoint))
    else:
        schema = schemas.request(descriptor.fields_by_name[endpoint.body].message_type)
    if endpoint.rpc == "AddEntry":  # a picture, or an entry given by its hashes
        from lookalike.client.lookalike_pb import lookalike_pb2 as pb

        schema = {"oneOf": [schema | {"required": ["image"]}, schemas.request(pb.HashEntry.DESCRIPTOR)]}
    content[JSON_MEDIA] = {"schema": schema}
    if endpoint.form:
        content["multipart/form-data"] = {"schema": _form_schema(endpoint)}
    return {"required": bool(endpoint.form), "content": content}


JSON_MEDIA = "application/json"


def _responses(endpoint: Endpoint, schemas: _Schemas) -> dict[str, Any]:
    error = {"description": "an error", "content": {JSON_MEDIA: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if endpoint.rpc == "ExportEntries":
        files = {media: {"schema": {"type": "string"}} for media in ("application/x-ndjson", "text/csv", "text/plain")}
        ok = {"description": "the file, streamed", "content": files}
    elif endpoint.rpc == "ImportEntries":
        ok = {"description": "what was imported", "content": {JSON_MEDIA: {"schema": _IMPORT_SUMMARY}}}
    else:
        assert endpoint.reply is not None
        ok = {
            "description": endpoint.reply.DESCRIPTOR.name,
            "content": {JSON_MEDIA: {"schema": schemas.reply(endpoint.reply.DESCRIPTOR)}},
        }
    return {"200": ok, "default": error}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every /v1 route (made once: it follows from the code alone)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        operation: dict[str, Any] = {
            "operationId": endpoint.rpc,
            "summary": endpoint.summary,
            "tags": ["admin" if endpoint.admin else endpoint.path.split("/")[2].split(":")[0]],
            "parameters": _parameters(endpoint, schemas),
            "responses": _responses(endpoint, schemas),
        }
        body = _request_body(endpoint, schemas)
        if body is not None:
            operation["requestBody"] = body
        paths.setdefault(endpoint.path, {})[endpoint.verb.lower()] = operation
    paths[OPENAPI_PATH] = {"get": _document_operation("GetOpenApi", "This document.", JSON_MEDIA, {"type": "object"})}
    paths[DOCS_PATH] = {
        "get": _document_operation("GetDocs", "This document as a web page.", "text/html", {"type": "string"})
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Near-duplicate image disallow lists. Send `Authorization: Bearer KEY` (no key is needed from "
                'loopback while none exists). Errors: `{"error": {"code", "status", "message", "reason", '
                "\"details\"}}`. Replies are protobuf's JSON mapping of the gRPC API's messages."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**dict(sorted(schemas.components.items())), "Error": _ERROR},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}, {}],
    }


def _document_operation(operation_id: str, summary: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["docs"],
        "security": [{}],
        "responses": {"200": {"description": summary, "content": {media: {"schema": schema}}}},
    }


# The docs page ---------------------------------------------------------------------------------


def _render_schema(schema: Any) -> str:
    return html.escape(json.dumps(schema, indent=2))


@cache
def docs_page() -> str:
    """The document as one self-contained page: no script, no CDN, readable from a machine without internet."""
    spec = document()
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(TITLE)}</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code,pre{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.6rem;overflow:auto}"
        "h2{border-top:1px solid #ddd;padding-top:1rem}.verb{font-weight:700;margin-right:.5rem}"
        "details{margin:.3rem 0}</style></head><body>",
        f"<h1>{html.escape(TITLE)}</h1><p>{html.escape(spec['info']['description'])}</p>",
        f'<p>The machine-readable document: <a href="{OPENAPI_PATH}"><code>{OPENAPI_PATH}</code></a>.</p>',
    ]
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            parts.append(
                f'<h2 id="{html.escape(operation["operationId"])}"><span class=verb>{verb.upper()}</span>'
                f"<code>{html.escape(path)}</code></h2><p>{html.escape(operation['summary'])} "
                f"<small>({html.escape(operation['operationId'])})</small></p>"
            )
            parameters = operation.get("parameters", [])
            if parameters:
                rows = "".join(
                    f"<li><code>{html.escape(p['name'])}</code> ({p['in']}): "
                    f"<code>{html.escape(json.dumps(p['schema']))}</code> {html.escape(p.get('description', ''))}</li>"
                    for p in parameters
                )
                parts.append(f"<p>Parameters:</p><ul>{rows}</ul>")
            for media, body in operation.get("requestBody", {}).get("content", {}).items():
                parts.append(
                    f"<details><summary>Request body: {html.escape(media)}</summary>"
                    f"<pre>{_render_schema(body['schema'])}</pre></details>"
                )
            for status, response in operation["responses"].items():
                for media, body in response.get("content", {}).items():
                    parts.append(
                        f"<details><summary>Reply {html.escape(status)}: {html.escape(media)}</summary>"
                        f"<pre>{_render_schema(body['schema'])}</pre></details>"
                    )
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f'<details id="{html.escape(name)}"><summary>{html.escape(name)}</summary>')
        parts.append(f"<pre>{_render_schema(schema)}</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)


async def _openapi(request: Request) -> Response:
    return JSONResponse(document())


async def _docs(request: Request) -> Response:
    return HTMLResponse(docs_page())


def routes() -> list[BaseRoute]:
    return [Route(OPENAPI_PATH, _openapi, methods=["GET"]), Route(DOCS_PATH, _docs, methods=["GET"])]
