"""`aruntime attest check|policy example` and `aruntime chat --confidential`: a client appraises
a server's boundary (with a verifier of its own, here in this process) before anything leaves.

    aruntime attest policy example http://127.0.0.1:8000 > policy.json
    aruntime attest check http://127.0.0.1:8000 --policy policy.json
    aruntime chat http://127.0.0.1:8000 --confidential --policy policy.json "Hello"
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from aruntime.confidential.appraisal import AppraisalPolicy, PolicyFileError
from aruntime.confidential.attester import package_digest
from aruntime.confidential.client import ConfidentialClient, ConfidentialError
from aruntime.confidential.ear import EarError, check_ear
from aruntime.confidential.evidence import key_hash
from aruntime.confidential.verifier import Verifier
from aruntime.errors import UsageError
from aruntime.evidence.signing import DeploymentKey

KEY_ENV = "ARUNTIME_API_KEY"  # the credential, when the server wants one


def _client(url: str, policy_file: Path) -> ConfidentialClient:
    try:
        policy = AppraisalPolicy.load(policy_file)
    except PolicyFileError as exc:
        raise UsageError(str(exc)) from None
    key = DeploymentKey.generate()  # this process's own verifier, for this check only
    headers = {"Authorization": f"Bearer {os.environ[KEY_ENV]}"} if KEY_ENV in os.environ \
        else {}
    return ConfidentialClient(url, Verifier(key, {policy.policy_id: policy}), policy.policy_id,
                              verifier_key=key.public_key, headers=headers)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url")
    parser.add_argument("--policy", type=Path, required=True, metavar="FILE")


def run_check(args: argparse.Namespace) -> int:
    client = _client(args.url, args.policy)
    try:
        attested = client.attest()
        check_ear(attested.token, client.verifier_key, nonce=attested.nonce,
                  policy_id=client.policy_id, key_hash=key_hash(attested.boundary_key))
    except (ConfidentialError, EarError, OSError) as exc:
        raise UsageError(f"{args.url} does not pass policy {client.policy_id!r}: {exc}") from None
    finally:
        client.close()
    ear = attested.ear
    print(f"{args.url}: {ear.status} under policy {ear.policy_id!r} ({ear.attester} attester; "
          f"key {ear.key_hash[:23]}…)")
    return 0


def add_example_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", default=None,
                        help="take the model's and the package's digests from this server")


def run_example(args: argparse.Namespace) -> int:
    refs: dict[str, list[str]] = {"aruntime": [package_digest()]}
    if args.url is not None:
        import httpx

        try:
            body = httpx.get(f"{args.url}/v1/attestation", params={"nonce": "example"},
                             timeout=30).json()
            refs = {k: [v] for k, v in body["evidence"]["measurements"].items()}
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise UsageError(f"{args.url}: no attestation to take digests from ({exc})") from None
    example: dict[str, Any] = {
        "policy_id": "example-software", "accepted_attesters": ["software"],
        "reference_values": refs, "min_versions": {}, "allow_debug": False, "max_age_s": 300,
        "_comment": "accepts the software attester, which proves what runs but not that "
                    "hardware protects it; list only tdx/snp for a hardware boundary"}
    print(json.dumps(example, indent=2))
    return 0


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url")
    parser.add_argument("prompt")
    parser.add_argument("--confidential", action="store_true", required=True,
                        help="seal the prompt to the server's attested key (required)")
    parser.add_argument("--policy", type=Path, required=True, metavar="FILE")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)


def run_chat(args: argparse.Namespace) -> int:
    client = _client(args.url, args.policy)
    try:
        model = args.model or client.http.get("/v1/models").json()["data"][0]["id"]
        answer = client.chat({"model": model, "max_tokens": args.max_tokens,
                              "messages": [{"role": "user", "content": args.prompt}]})
    except (ConfidentialError, OSError, KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"nothing was sent to {args.url}: {exc}") from None
    finally:
        client.close()
    print(answer["choices"][0]["message"]["content"])
    return 0


