"""Safety service: PII, secrets, prompt injection and toxicity screening under per-tenant policy."""
