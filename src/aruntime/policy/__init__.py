"""Who is asking and what they may do: identities (API keys, OIDC JWTs), Cedar decisions at
every decision point, signed policy bundles, and per-tenant quotas."""
