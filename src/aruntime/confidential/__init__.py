"""Confidential execution: attesters produce evidence of the boundary a request would run in,
a verifier appraises it into a signed attestation result (EAR), and clients release prompts and
keys only to a boundary whose result they checked. This machine has no TEE: its attester is the
software one, which says so in every report, and no policy that requires hardware accepts it."""
