"""The HTTP edge: routes, wire formats and the OpenAPI document; thin over the layers below.

Owns the ``/v1`` REST routes and wire format, KServe v2 with Triton's extensions, Server-Sent
Events and WebSocket subscriptions, the OpenAPI document, CORS, request ids and the access log,
authentication (the scope of every route, the token check, quotas, ending revoked subscriptions),
and the typed keys under which the application keeps its resources.

May import: ``core``, ``step`` and ``push``.
"""
