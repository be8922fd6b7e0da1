"""Quality stages of a dataset build: normalisation, length, language, heuristics, dedup, PII redaction."""
