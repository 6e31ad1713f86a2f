"""`python -m services.gateway`: run the OpenAI-compatible gateway."""

from services.gateway.server import main

main()
