"""The instance proxy: streaming HTTP and WebSocket relay to engines on their own hosts, with
activity tracking and wake-on-request. Pure ASGI on the hot path; no store query per request."""
