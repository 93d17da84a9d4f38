"""The HTTP edges: the server protocol and its limits, then the ASGI app's routes (chat
completions, API, monitoring) and hot reload."""
