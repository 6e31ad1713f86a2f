"""`python -m services.router`: run the router service."""

from libs.runtime.main import run_service
from services.router.server import NAME, build_server
from services.router.settings import RouterSettings

run_service(NAME, RouterSettings, build_server)
