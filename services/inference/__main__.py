"""`python -m services.inference`: run the inference service."""

from libs.runtime.main import run_service
from services.inference.server import NAME, build_server
from services.inference.settings import InferenceSettings

run_service(NAME, InferenceSettings, build_server)
