"""The HTTP edges: the ASGI app's routes (chat completions, API, monitoring) and hot reload."""
