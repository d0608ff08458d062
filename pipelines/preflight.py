"""Checks that run on the driver before Ray starts, so that a job that cannot work says why
in one line within seconds instead of a traceback minutes later (`PreflightError`, exit 2).

- the checkpoint: there, readable (local or fsspec), loadable by the safe loader
  (`weights_only=True`) and holding exactly the model's keys and shapes (checked against the
  model built on the meta device, so no weights are materialised); its sha256 is returned for
  the output's identity;
- the input: reachable and listing at least one shard (S3: credentials and endpoint answer,
  probed with short timeouts and one attempt);
- the output: writable (a probe file written and removed);
- a concept model's (SAM 3) vocabulary file: there and of the official format, of the size of
  the checkpoint's token table when a checkpoint is given; its concept list, when a file.
"""

from __future__ import annotations

import uuid
from typing import Any

import fsspec

from models import ConceptModel, model_kind
from models.checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict
from models.registry import OFFICIAL_CHECKPOINTS
from operators.config import ModelConfig, StorageConfig, parse_concepts_file
from operators.shards.layout import meta_root
from operators.shards.listing import list_shards
from operators.shards.prepare import model_skeleton

from .config import LABEL_PROTOCOLS

PROBE_TIMEOUT_S = 5.0  # seconds a preflight request may take before the store counts as down


class PreflightError(ValueError):
    """The job cannot run as configured; the message names the setting and what to do."""


def probe_options(storage: StorageConfig) -> dict:
    """fsspec options of `storage` with one attempt and short timeouts (a dead endpoint is
    reported in seconds, not after minutes of retries)."""
    opts = storage.options()
    opts["config_kwargs"] = {**opts.get("config_kwargs", {}), "connect_timeout": PROBE_TIMEOUT_S,
                             "read_timeout": PROBE_TIMEOUT_S,
                             "retries": {"max_attempts": 1, "mode": "standard"}}
    opts["skip_instance_cache"] = True
    return opts


def storage_problem(e: BaseException, url: str, field: str) -> PreflightError:
    """A one-line PreflightError for an exception of the object store or file system."""
    name = type(e).__name__
    text = " ".join(str(e).split())
    if "NoCredentials" in name or "Unable to locate credentials" in text:
        return PreflightError(f"{field}: no S3 credentials found for '{url}' (set "
                              f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run "
                              f"where an instance role applies; storage.anon: true for public "
                              f"buckets)")
    if "EndpointConnection" in name or "Connect" in name or "connect" in text.lower():
        return PreflightError(f"{field}: cannot reach the object store for '{url}' "
                              f"(storage.endpoint_url and the network): {name}: {text[:160]}")
    if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return PreflightError(f"{field}: access denied to '{url}': {text[:160]}")
    return PreflightError(f"{field}: cannot use '{url}': {name}: {text[:200]}")


def check_checkpoint(name: str, checkpoint: str | None, sha256: str | None, field: str = "model",
                     storage: StorageConfig | None = None) -> str | None:
    """The checkpoint's sha256 after checking it loads safely and fits registry model `name`
    (None for random weights); a URL is read with the job's `storage` options. Raises
    PreflightError naming `field`.checkpoint."""
    if checkpoint is None:
        return None
    skeleton = model_skeleton(name)
    try:
        loaded, digest = read_checkpoint(
            checkpoint, sha256=sha256, loader=getattr(skeleton, "checkpoint_loader", None),
            storage_options=storage.options() if storage is not None else None)
    except CheckpointError as e:
        raise PreflightError(f"{field}.checkpoint: {e}") from e
    try:
        state = unwrap_state_dict(loaded, getattr(skeleton, "checkpoint_wrappers", ()))
        rename = getattr(skeleton, "strip_checkpoint", None)  # e.g. SAM 3's `detector.` part
        state = rename(state) if rename is not None else state
    except (CheckpointError, ValueError, TypeError) as e:
        raise PreflightError(f"{field}.checkpoint: '{checkpoint}' is not a {name} "
                             f"checkpoint: {e}") from e
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    ignored = tuple(getattr(skeleton, "checkpoint_ignored_prefixes", ()))
    got = {k: tuple(v.shape) for k, v in state.items()
           if hasattr(v, "shape") and not (ignored and k.startswith(ignored))}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("keys of another shape", wrong)) if v]
        official = OFFICIAL_CHECKPOINTS.get(name, "see samdata models")
        raise PreflightError(f"{field}.checkpoint: '{checkpoint}' does not fit {name}: "
                             f"{', '.join(parts)}; expected the official file ({official})")
    return digest


def check_input(urls: list[str], shards: str | None, limit: int | None,
                storage: StorageConfig) -> int:
    """How many shards the input lists (at least one, else PreflightError naming input.urls)."""
    try:
        found = list_shards(urls, shards, limit, probe_options(storage))
    except (FileNotFoundError, ValueError) as e:
        raise PreflightError(f"input.urls: {e}") from e
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, permissions: one line
        raise storage_problem(e, urls[0], "input.urls") from e
    if not found:
        raise PreflightError(f"input.urls: expected at least one shard (a .tar, a folder of "
                             f"images, or a glob of them) in {urls}"
                             f"{' in range ' + shards if shards else ''}, got none")
    return len(found)


def check_output(root: str, storage: StorageConfig, field: str = "output.path") -> None:
    """Write and remove a probe file in the bookkeeping folder of `root`; PreflightError
    naming `field` when that fails."""
    try:
        meta_root(root)
    except ValueError as e:
        raise PreflightError(str(e)) from e
    try:
        fs, base = fsspec.core.url_to_fs(root, **probe_options(storage))
        probe = f"{meta_root(base)}/probe-{uuid.uuid4().hex[:8]}"
        fs.makedirs(probe.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:  # noqa: BLE001 - one line, naming the field
        raise storage_problem(e, root, field) from e


def preflight_evaluate(cfg: Any) -> None:
    """The checks of `samdata evaluate` before Ray starts: every model's and the reference's
    checkpoint, the corpus (box, points, agreement; not proposals and concepts), the report
    folder."""
    for n, m in enumerate(cfg.models):
        check_checkpoint(m.name, m.checkpoint, m.sha256, field=f"models[{n}]",
                         storage=cfg.storage)
    if cfg.reference is not None:
        check_checkpoint(cfg.reference.name, cfg.reference.checkpoint, cfg.reference.sha256,
                         field="reference", storage=cfg.storage)
    if cfg.protocol not in LABEL_PROTOCOLS:  # those read label datasets, not a corpus
        check_input(cfg.input.urls, cfg.input.shards, cfg.input.limit, cfg.storage)


def check_vocabulary(model: ModelConfig, storage: StorageConfig) -> str:
    """A concept model's vocabulary: readable, of the official format, and (with a checkpoint)
    holding exactly as many tokens as the model's token table: another vocabulary would map
    the concepts to other tokens and label the wrong thing without a sign. Returns the file's
    sha256, for the output's identity (a rerun with another vocabulary is refused)."""
    import hashlib

    from models.sam3.tokenizer import Tokenizer
    from operators.runtime.device import local_copy, vocabulary_of

    try:
        path = vocabulary_of(model)
        local = local_copy(path, probe_options(storage))
        tokenizer = Tokenizer(local)
        with open(local, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (OSError, ValueError) as e:
        msg = str(e).removeprefix("model.vocabulary: ")
        raise PreflightError(f"model.vocabulary: {msg}") from e
    rows = model_skeleton(model.name).vocab_size
    if model.checkpoint and tokenizer.vocab_size != rows:
        raise PreflightError(f"model.vocabulary: expected the official vocabulary of "
                             f"{model.name} ({rows} tokens, {ModelConfig.VOCABULARY_FILE}), "
                             f"got {tokenizer.vocab_size} tokens in '{path}'")
    if tokenizer.vocab_size > rows:  # random weights: a smaller test vocabulary is fine, a
        #   larger one has ids past the token table (the actors would fail on every image)
        raise PreflightError(f"model.vocabulary: expected at most {rows} tokens (the token "
                             f"table of {model.name}), got {tokenizer.vocab_size} tokens in "
                             f"'{path}'")
    return digest


def resolve_concepts(concepts: list[str] | str, storage: StorageConfig) -> list[str]:
    """prompts.concepts -> the names: the list itself, or the lines of the file it names."""
    if isinstance(concepts, list):
        return concepts
    try:
        with fsspec.open(concepts, "rt", encoding="utf-8", **probe_options(storage)) as f:
            text = f.read()
    except FileNotFoundError as e:
        raise PreflightError(f"prompts.concepts: expected a list of names or a file of them "
                             f"(one a line), got '{concepts}', which is not there") from e
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, permissions: one line
        raise storage_problem(e, concepts, "prompts.concepts") from e
    try:
        return parse_concepts_file(text)
    except ValueError as e:
        raise PreflightError(f"prompts.concepts: '{concepts}': {e}") from e


def preflight_job(cfg: Any) -> str | None:
    """Every check of a sharded job (embed, autolabel, segment) before Ray starts; returns the
    checkpoint's sha256 (None for random weights)."""
    digest = check_checkpoint(cfg.model.name, cfg.model.checkpoint, cfg.model.sha256,
                              storage=cfg.storage)
    if model_kind(cfg.model.name) is ConceptModel and hasattr(cfg, "prompts"):
        check_vocabulary(cfg.model, cfg.storage)  # jobs that encode text (not embed)
    check_input(cfg.input.urls, cfg.input.shards, cfg.input.limit, cfg.storage)
    check_output(cfg.output.path, cfg.storage)
    return digest
