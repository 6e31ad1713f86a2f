"""`python -m services.gateway`: run the OpenAI-compatible gateway."""

from libs.runtime.main import run_service
from services.gateway.server import NAME, GatewayService
from services.gateway.settings import GatewaySettings

run_service(NAME, GatewaySettings, GatewayService)
