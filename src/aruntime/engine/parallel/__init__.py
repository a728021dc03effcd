"""Model parallelism: one model definition sharded across ranks (tensor parallel)."""
