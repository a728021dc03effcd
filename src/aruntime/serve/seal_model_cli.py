"""`aruntime seal-model DIR --kbs URL --resource R`: seal a checkpoint's weights at rest under a
fresh data key that only the key broker keeps.

    aruntime kbs serve --resources kbs/ --appraisal policy.json --admin-key admin.pub.pem &
    aruntime seal-model models/m --kbs http://127.0.0.1:8080 --resource models/key/m
    aruntime serve --model models/m-sealed --kbs http://127.0.0.1:8080

The sealed directory holds the config and tokenizer in the clear (the API needs them), each
weight file as `<name>.sealed`, and `sealed.json`; the key is in memory here until the broker
has it, and nowhere on this machine after.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aruntime import paths
from aruntime.confidential.kbs_client import RcarError, put_resource
from aruntime.confidential.release_policy import ReleasePolicyError, check
from aruntime.confidential.sealed_weights import MANIFEST, Manifest, SealedFile, seal_file
from aruntime.errors import UsageError
from aruntime.evidence.signing import DeploymentKey, SigningError, public_key_path
from aruntime.fsutil import write_atomic

ADMIN_KEY = "kbs-admin-ed25519.pem"
CLEAR_SUFFIXES = frozenset({".json", ".jinja", ".txt", ".md"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="a Hugging Face checkpoint (safetensors)")
    parser.add_argument("--kbs", required=True, metavar="URL", help="the key broker")
    parser.add_argument("--resource", required=True, metavar="REPO/TYPE/TAG",
                        help="the broker's name for the data key")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the sealed checkpoint goes (default: DIR-sealed)")
    parser.add_argument("--admin-key", type=Path, default=None, metavar="FILE",
                        help="the Ed25519 key the broker knows as its admin (default: "
                             f"{paths.data_dir() / ADMIN_KEY}, made when missing)")
    parser.add_argument("--release-policy", type=Path, default=None, metavar="FILE",
                        help="the data key's release policy (JSON; default: the broker's)")


def run(args: argparse.Namespace) -> int:
    from aruntime.engine.loader import CheckpointError, load_checkpoint

    if len(args.resource.split("/")) != 3:
        raise UsageError(f"--resource {args.resource}: must be REPO/TYPE/TAG")
    try:
        ckpt = load_checkpoint(args.dir)
        admin = DeploymentKey.load_or_create(args.admin_key or paths.data_dir() / ADMIN_KEY)
        policy = _release_policy(args.release_policy)
    except (CheckpointError, SigningError) as exc:
        raise UsageError(str(exc)) from None
    if ckpt.format != "safetensors":
        raise UsageError(f"{args.dir}: only a safetensors checkpoint can be sealed "
                         f"(this one is {ckpt.format})")
    out: Path = args.out or args.dir.with_name(args.dir.name + "-sealed")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: exists and is not empty")
    key = AESGCM.generate_key(256)
    try:
        manifest = _seal(ckpt.path, ckpt.weight_files, out, key, args.resource, ckpt.revision)
        put_resource(args.kbs, args.resource, key, admin, policy)
    except (RcarError, OSError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        hint = (f" (is the broker started with --admin-key {public_key_path(admin.path)}?)"
                if isinstance(exc, RcarError) and exc.status == 401 and admin.path else "")
        raise UsageError(f"sealing {args.dir} failed, nothing kept: {exc}{hint}") from None
    del key
    write_atomic(out / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode(), 0o644)
    print(f"sealed {len(manifest.files)} weight file(s) of {args.dir} into {out}: revision "
          f"{manifest.revision}, key at {args.kbs} as {args.resource}")
    return 0


def _release_policy(path: Path | None) -> dict[str, object] | None:
    if path is None:
        return None
    try:
        rule = json.loads(path.read_text(encoding="utf-8"))
        check(rule)
    except (OSError, ValueError, ReleasePolicyError) as exc:
        raise UsageError(f"--release-policy {path}: {exc}") from None
    return dict(rule)


def _seal(src: Path, weights: tuple[Path, ...], out: Path, key: bytes, resource: str,
          revision: str) -> Manifest:
    """The clear files copied (config, tokenizer, templates: never a weight file of another
    format), each weight file sealed beside them."""
    out.mkdir(parents=True, exist_ok=True)
    skip = {"model.safetensors.index.json", MANIFEST}
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix in CLEAR_SUFFIXES and f.name not in skip:
            shutil.copy2(f, out / f.name)
    sealed: list[SealedFile] = [seal_file(w, out / (w.name + ".sealed"), key, i)
                                for i, w in enumerate(weights)]
    return Manifest(resource, revision, tuple(sealed))
