"""`python -m services.safety`: run the safety service."""

from libs.runtime.main import run_service
from services.safety.server import NAME, build_server
from services.safety.settings import SafetySettings

run_service(NAME, SafetySettings, build_server)
