"""Every Hugging Face Hub access of the package, failing fast and clearly when the Hub cannot be reached.

``huggingface_hub`` retries a failed HEAD request with exponential backoff (about 25 s with no network
before it gives up) and ends in a long traceback. Here every request that may hang runs through
:func:`with_deadline` (a daemon thread, so even a DNS lookup that never returns cannot block the caller)
with :data:`HUB_TIMEOUT`, and every failure goes through :func:`classify_hub_error`, which turns it into
one actionable message: which id was asked for and what to do instead.

:func:`resolve_local_or_hub` checks the local path first, then the Hub cache, then makes one probe
request before downloading; :func:`push_to_hub` uploads a trained adapter directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar, Union

__all__ = [
    "HUB_TIMEOUT",
    "HubUnavailableError",
    "HubFileNotFoundError",
    "classify_hub_error",
    "hub_file_exists",
    "hub_offline",
    "looks_like_repo_id",
    "probe_repo",
    "push_to_hub",
    "resolve_local_or_hub",
    "unavailable_error",
    "with_deadline",
]

#: Seconds any single Hub request may take (model files, datasets, uploads alike).
HUB_TIMEOUT = 10.0

T = TypeVar("T")


class HubUnavailableError(OSError):
    """The Hugging Face Hub cannot be reached (offline mode, no network, DNS failure, timeout) and the
    requested repo/file is neither a local path nor in the local Hub cache."""


class HubFileNotFoundError(FileNotFoundError):
    """The repo exists (or is a local directory) but has no such file or folder."""


def hub_offline() -> bool:
    """Whether offline mode is on: ``HF_HUB_OFFLINE`` (read now, not only at import) or ``TRANSFORMERS_OFFLINE``."""
    from huggingface_hub import constants

    def truthy(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return bool(constants.HF_HUB_OFFLINE) or truthy("HF_HUB_OFFLINE") or truthy("TRANSFORMERS_OFFLINE")


def looks_like_repo_id(name: str) -> bool:
    """``"name"`` or ``"namespace/name"`` in the Hub's alphabet (a string that cannot be a Hub id is a
    missing path)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# one deadline, one classifier


def with_deadline(
    call: Callable[[], T], timeout: float, name: str = "hub-request"
) -> tuple[Optional[T], Optional[BaseException]]:
    """``(result, None)`` when ``call()`` returned within ``timeout`` seconds (plus 2 s of slack for the
    request's own timeout to fire first), else ``(None, error)``: what it raised, or a ``TimeoutError``."""
    outcome: list = []

    def target():
        try:
            outcome.append((call(), None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome.append((None, error))

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if not outcome:
        return None, TimeoutError(f"no answer within {timeout:g} s")
    return outcome[0]


def unavailable_error(what: str, reason: str, remedy: str) -> HubUnavailableError:
    """The one message for "the Hub cannot be reached": what was being done, why, and what to do instead."""
    return HubUnavailableError(f"{what}: the Hugging Face Hub cannot be reached ({reason}). {remedy}")


def _unreachable_reason(error: BaseException, endpoint: Optional[str] = None) -> Optional[str]:
    """Why ``error`` means the Hub cannot be reached (offline mode, 5xx/429, network), or ``None``."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is enabled"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and (status >= 500 or status == 429):
            return f"the Hub answered HTTP {status}"
        return None  # e.g. 401 on a private repo with a token that can still download: let the request decide
    network_modules = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}
    if isinstance(error, (OSError, TimeoutError)) or type(error).__module__.split(".")[0] in network_modules:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{type(error).__name__} contacting {endpoint or 'the Hub'}: {reason[:200]}"
    return None


def classify_hub_error(
    error: BaseException,
    repo_id: str,
    remedy: str,
    kind: str = "repo",
    revision: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> Optional[OSError]:
    """The error to raise for a failed Hub request about ``kind`` ``repo_id`` (``repo``, ``dataset``), or
    ``None`` when the failure says nothing conclusive (go on and let the download decide). ``remedy`` (what
    to do instead: a local directory, a local dataset folder) ends every message."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    name = f"{kind} '{repo_id}'"
    if isinstance(error, GatedRepoError):
        return PermissionError(
            f"{name} is gated on the Hugging Face Hub: accept its terms there and log in (`hf auth login`, or "
            f"pass `token=`). {remedy}"
        )
    if isinstance(error, RepositoryNotFoundError):
        return FileNotFoundError(
            f"{name} is neither a local path nor on the Hugging Face Hub (or it is private: log in or pass "
            f"`token=`); check the spelling. {remedy}"
        )
    if isinstance(error, RevisionNotFoundError):
        return FileNotFoundError(f"Revision '{revision}' does not exist in the Hub {name}.")
    reason = _unreachable_reason(error, endpoint)
    return None if reason is None else unavailable_error(f"cannot get {name}", reason, remedy)


def probe_repo(
    repo_id: str,
    revision: Optional[str] = None,
    repo_type: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    endpoint: Optional[str] = None,
    timeout: float = HUB_TIMEOUT,
) -> Optional[BaseException]:
    """One request with a hard deadline: ``None`` when the repo answered, else the error."""
    from huggingface_hub import HfApi

    def ask():
        HfApi(endpoint=endpoint).repo_info(
            repo_id, revision=revision, repo_type=repo_type, token=token, timeout=timeout
        )

    return with_deadline(ask, timeout, name=f"hub-probe:{repo_id}")[1]


def hub_file_exists(
    repo_id: str,
    filename: str,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    repo_type: Optional[str] = None,
    endpoint: Optional[str] = None,
    timeout: float = HUB_TIMEOUT,
) -> bool:
    """Whether ``subfolder/filename`` exists in a Hub repo (``False`` when the Hub cannot be asked)."""
    if hub_offline():
        return False
    from huggingface_hub import HfApi

    def ask() -> bool:
        path = _join(subfolder, filename)
        return HfApi(endpoint=endpoint).file_exists(repo_id, path, revision=revision, repo_type=repo_type, token=token)

    return bool(with_deadline(ask, timeout, name=f"hub-file:{repo_id}")[0])


# ----------------------------------------------------------------------------------------------------
# local-or-Hub resolution


def _download_hint(repo_id: str, subfolder: Optional[str], revision: Optional[str]) -> str:
    include = f" --include '{subfolder.strip('/')}/*'" if subfolder else ""
    rev = f" --revision {revision}" if revision else ""
    where = f"DIR/{subfolder.strip('/')}" if subfolder else "DIR"
    return (
        f"It is not a local path nor in the local Hub cache: download it on a machine with network access "
        f"(`hf download {repo_id}{rev}{include} --local-dir DIR`, or `huggingface-cli download ...` with older "
        f"huggingface_hub) and pass {where} (a local directory) instead."
    )


def _join(*parts: Optional[str]) -> str:
    return "/".join(p.strip("/") for p in parts if p)


def _download(repo_id, filename, subfolder, revision, cache_dir, repo_type, allow_patterns, **options) -> str:
    """``hf_hub_download`` of ``subfolder/filename``, or (``filename=None``) ``snapshot_download`` of the repo
    and the path of ``subfolder`` in it (which may not exist). ``options``: cache-only or network settings."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if filename is not None:
        return hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            repo_type=repo_type,
            **options,
        )
    path = snapshot_download(
        repo_id, revision=revision, cache_dir=cache_dir, repo_type=repo_type, allow_patterns=allow_patterns, **options
    )
    return os.path.join(path, subfolder) if subfolder else path


def _from_cache(repo_id, filename, subfolder, revision, cache_dir, repo_type, allow_patterns) -> Optional[str]:
    try:
        path = _download(
            repo_id, filename, subfolder, revision, cache_dir, repo_type, allow_patterns, local_files_only=True
        )
    except Exception:  # not cached (LocalEntryNotFoundError and friends): go to the network
        return None
    return path if filename is not None or os.path.isdir(path) else None


def resolve_local_or_hub(
    id_or_path: Union[str, os.PathLike],
    filename: Optional[str] = None,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
    repo_type: Optional[str] = None,
    allow_patterns: Optional[Union[str, Sequence[str]]] = None,
    endpoint: Optional[str] = None,
    timeout: float = HUB_TIMEOUT,
) -> str:
    """The local path of ``filename`` (or of the directory, when ``filename`` is None) in a local
    directory or a Hub repo, ``subfolder`` included.

    Order: an existing local path (no network at all); then the Hub cache (``local_files_only``);
    then, unless offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``), one probe request with
    ``timeout`` seconds and a hard deadline, then the download.

    Raises:
        HubUnavailableError: not local, not cached and the Hub cannot be reached (offline mode, no
            network, DNS failure, timeout, Hub 5xx); the message names the id and how to pass a
            local directory instead.
        HubFileNotFoundError: (a ``FileNotFoundError``) the local directory or the Hub repo has no such file.
        FileNotFoundError: a string that is neither an existing path nor a valid repo id; a repo or
            revision that does not exist on the Hub.
    """
    name = os.fspath(id_or_path)
    local = Path(name).expanduser()
    if local.exists():
        target = local / subfolder if subfolder else local
        if filename is not None:
            target = target / filename
        if not target.exists():
            what = "file" if filename is not None else "directory"
            raise HubFileNotFoundError(f"No {what} '{_join(subfolder, filename)}' in the local directory '{local}'.")
        return str(target)
    if not looks_like_repo_id(name):
        raise FileNotFoundError(
            f"'{name}' does not exist locally and is not a valid Hugging Face Hub repo id "
            "('name' or 'namespace/name')."
        )

    cached = _from_cache(name, filename, subfolder, revision, cache_dir, repo_type, allow_patterns)
    if cached is not None:
        return cached
    remedy = _download_hint(name, subfolder, revision)
    if local_files_only:
        raise unavailable_error(f"cannot get repo '{name}'", "local_files_only=True", remedy)
    if hub_offline():
        raise unavailable_error(f"cannot get repo '{name}'", "offline mode: HF_HUB_OFFLINE=1", remedy)

    error = probe_repo(name, revision, repo_type, token, endpoint, timeout)
    if error is not None:
        raised = classify_hub_error(error, name, remedy, revision=revision, endpoint=endpoint)
        if raised is not None:
            raise raised from None

    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        path = _download(
            name,
            filename,
            subfolder,
            revision,
            cache_dir,
            repo_type,
            allow_patterns,
            token=token,
            endpoint=endpoint,
            etag_timeout=timeout,
        )
    except EntryNotFoundError:
        raise HubFileNotFoundError(f"The Hub repo '{name}' has no file '{_join(subfolder, filename)}'.") from None
    except (HfHubHTTPError, OSError) as error:
        raised = classify_hub_error(error, name, remedy, revision=revision, endpoint=endpoint)
        if raised is not None:
            raise raised from None
        raise
    if filename is None and not os.path.isdir(path):
        raise HubFileNotFoundError(f"The Hub repo '{name}' has no folder '{subfolder}'.")
    return path


# ----------------------------------------------------------------------------------------------------
# upload


def push_to_hub(
    output_dir: Union[str, os.PathLike], repo_id: str, token: Optional[str] = None, private: bool = False
) -> str:
    """Upload a trained adapter directory (adapter, model card, pictures; not checkpoints or logs) to the
    Hub; returns the repo URL. Without network it fails at once with what to do instead."""
    from huggingface_hub import HfApi

    what = f"cannot push {output_dir} to '{repo_id}'"
    remedy = f"Upload the directory later with `hf upload {repo_id} {output_dir}`."
    if hub_offline():
        raise unavailable_error(what, "offline mode: HF_HUB_OFFLINE=1", remedy)
    # The target repo itself answers the reachability question: "not found" is fine (it is created next).
    error = probe_repo(repo_id, token=token)
    reason = None if error is None else _unreachable_reason(error)
    if reason is not None:
        raise unavailable_error(what, reason, remedy) from None
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*", "*.pkl", "*.bin"],
    )
    return str(url)
