"""A reward out of process: the HTTP server (``cgrpo serve-reward``), the batching of
concurrent requests, the JSON + PNG wire format, and the ``remote`` reward that calls it."""
