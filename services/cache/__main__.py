"""`python -m services.cache`: run the cache service."""

from libs.runtime.main import run_service
from services.cache.server import NAME, build_server
from services.cache.settings import CacheSettings

run_service(NAME, CacheSettings, build_server)
