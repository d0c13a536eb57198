"""The HTTP transport: the JSON API under /v1 and the dashboard at /, served beside gRPC by one process.

Like the gRPC servicer, every route only authenticates, converts, calls one operation and converts
back: `app` assembles and serves the ASGI app, `context` holds what every route shares (operations,
access, the shared call limit and accounts), `auth` turns a request into a `Caller`, `errors` is the
one table of HTTP statuses, `api` the /v1 routes, `openapi` the document generated from them, and
`dashboard` the pages mounted at /.
"""
