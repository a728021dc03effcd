"""The console's test server, shared by its API and browser tests: API keys of an operator, a
non-operator of the same tenant and a user of another tenant; a policy that keeps `admin` on
the console to the `operator` role; two workers; the repository's own claims."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aruntime.engine.config import EngineConfig
from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore
from aruntime.policy.cedar_authorizer import CedarAuthorizer, CedarPolicy
from aruntime.serve.launch import BackgroundServer, background_server

POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("console-for-operators")
forbid (principal, action == ARuntime::Action::"admin", resource == ARuntime::Console::"console")
unless { principal.roles.contains("operator") };
"""
REPO = Path(__file__).resolve().parents[1]


def make_keys(data: Path) -> dict[str, str]:
    store = KeyStore(data / KEYS_FILE)
    return {"operator": store.create("acme", "olga", ("operator",))[1].reveal(),
            "user": store.create("acme", "ursula", ("user",))[1].reveal(),
            "guest": store.create("globex", "gus", ("user",))[1].reveal()}


@contextmanager
def console_server(model: Path, data: Path) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(model), kv_cache_bytes=2 * 1024 * 1024, max_model_len=256)
    with background_server(config, data, served_model_name="tiny", workers=2,
                           authenticator=KeyAuth(KeyStore(data / KEYS_FILE)),
                           authorizer=CedarAuthorizer(CedarPolicy.parse(POLICY)),
                           claims_root=REPO) as srv:
        yield srv
