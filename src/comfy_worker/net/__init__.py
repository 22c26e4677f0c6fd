"""The network edge of a job's URLs: redaction (:mod:`.redact`), the URL policy
(:mod:`.policy`) and HTTP that applies it to every connection (:mod:`.http`)."""

from comfy_worker.net.redact import redact_text, redact_url

__all__ = ["redact_text", "redact_url"]
