"""`python -m services.tokenizer`: run the tokenizer service."""

from libs.runtime.main import run_service
from services.tokenizer.server import NAME, build_server
from services.tokenizer.settings import TokenizerSettings

run_service(NAME, TokenizerSettings, build_server)
