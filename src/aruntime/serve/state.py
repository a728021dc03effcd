"""What one server holds for the life of its app: the pool, the tokenizer and model card, metrics,
the evidence log and its signer, admission's learned costs, the tracer, the model's tool-call
format, who is asking (the authenticator) and what they may do (the authorizer), what a prompt's
bytes say about its length, and the tenants' salts. Lives on `app.state.server`, made in the
app's lifespan (serve/app.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.trace import Tracer
from starlette.requests import Request

from aruntime import telemetry
from aruntime.adapt.controller import RolloutController
from aruntime.adapt.request_releases import RequestReleases
from aruntime.adapt.retrieval import Retriever
from aruntime.adapt.versions import Versions
from aruntime.agents.tools import Tool
from aruntime.cluster.serving import ServingPool
from aruntime.confidential.attester import boundary_attester
from aruntime.confidential.boundary import Boundary
from aruntime.confidential.transparency import TransparencyLog
from aruntime.contracts import DecisionRecord, EvidenceRecord
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.tokenizer import Tokenizer
from aruntime.evidence.log import EvidenceLog
from aruntime.evidence.signing import DeploymentKey
from aruntime.policy.cedar_authorizer import CedarAuthorizer
from aruntime.policy.decision import Authorizer
from aruntime.policy.identity import Authenticator, NoAuth
from aruntime.policy.quotas import Quotas
from aruntime.route_policy import RoutePolicy
from aruntime.serve.admission import Admission
from aruntime.serve.metrics import Metrics
from aruntime.serve.recent_decisions import RecentDecisions
from aruntime.serve.released_model import ModelEngines
from aruntime.serve.tool_parsers import HermesParser, ToolParser
from aruntime.serve.traffic import Traffic


@dataclass
class ServerState:
    client: ServingPool
    tokenizer: Tokenizer
    model_name: str
    info: ModelInfo
    demo: bool
    data_dir: Path
    metrics: Metrics
    evidence: EvidenceLog[EvidenceRecord]
    signer: DeploymentKey
    created: int = field(default_factory=lambda: int(time.time()))
    admission: Admission = field(default_factory=Admission)
    tracer: Tracer = field(default_factory=telemetry.process_tracer)  # serve/tracing.py's spans
    tool_parser: ToolParser = field(default_factory=HermesParser)  # the model's call format
    authenticator: Authenticator = field(default_factory=NoAuth)  # serve --auth
    authorizer: Authorizer = field(default_factory=CedarAuthorizer)  # serve --policy (builtin)
    quotas: Quotas = field(default_factory=Quotas)  # serve --tenant-rpm ... (unlimited)
    tools: dict[str, Tool] = field(default_factory=dict)  # serve --tools: served over MCP
    decisions: EvidenceLog[DecisionRecord] | None = None  # decisions no other record holds
    boundary: Boundary | None = None  # the attester and HPKE key of confidential requests
    # releases and rollouts on the server's journal (serve/adaptation.py sets both at start)
    adaptation: RolloutController = field(init=False)
    prompts: RequestReleases[str] = field(init=False)  # `aruntime.prompt`, verified
    retrievals: RequestReleases[Retriever] = field(init=False)  # `aruntime.retrieval`
    route: Versions[RoutePolicy] | None = None  # serve --release route=NAME: the router's
    models: ModelEngines | None = None  # serve --release model=NAME: each version's engine
    # the most bytes one token stands for; None: a prompt's bytes bound nothing (prompt_bound.py)
    longest_token_bytes: int | None = None
    traffic: Traffic = field(default_factory=Traffic)  # the console's window on requests
    claims_root: Path = field(default_factory=Path.cwd)  # the repository root holding claims/
    recent_decisions: RecentDecisions = field(default_factory=RecentDecisions)
    _salts: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.boundary is None:  # no TEE here: the software attester, which says so
            attester = boundary_attester(
                self.signer, model_revision=self.info.revision,
                config={"model": self.model_name, "max_model_len": self.info.max_model_len})
            self.boundary = Boundary(attester)
            self.boundary.publish(TransparencyLog(self.data_dir / "transparency.jsonl",
                                                  self.signer), attester.measurements)

    def salt(self, tenant: str) -> bytes:
        """The tenant's output-digest salt; deleting its file unlinks digests from outputs."""
        if tenant not in self._salts:
            path = self.data_dir / "salts" / f"{tenant}.key"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._salts[tenant] = path.read_bytes()
            else:
                salt = os.urandom(32)
                with os.fdopen(fd, "wb") as f:
                    f.write(salt)
                self._salts[tenant] = salt
        return self._salts[tenant]


def state_of(request: Request) -> ServerState:
    """The state of the app serving `request` (routes, dependencies, the MCP handlers)."""
    state: ServerState = request.app.state.server
    return state
