"""HTTP edges: the server protocol, request bodies, and the ASGI endpoints."""
