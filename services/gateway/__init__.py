"""OpenAI-compatible HTTP gateway in front of the router."""
