"""API keys: `llm-<key_id>-<secret>` keys stored in Redis as peppered HMAC digests."""

from libs.keys.apikey import MalformedKey, ParsedKey
from libs.keys.store import KeyRecord, KeyStore, TenantSettings

__all__ = ["KeyRecord", "KeyStore", "MalformedKey", "ParsedKey", "TenantSettings"]
