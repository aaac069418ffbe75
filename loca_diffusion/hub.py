"""Local-or-Hub resolution that fails fast and clearly when the Hub cannot be reached.

``huggingface_hub`` retries a failed HEAD request with exponential backoff (about 25 s with no network
before it gives up) and ends in a long traceback. :func:`resolve_local_or_hub` checks the local path
first, then the Hub cache, then makes one probe request with a short timeout in a daemon thread (so
even a DNS lookup that never returns cannot block the caller), and raises :class:`HubUnavailableError`
with one actionable message: which id was asked for and how to pass a local directory instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["HubUnavailableError", "HubFileNotFoundError", "resolve_local_or_hub", "looks_like_repo_id", "hub_offline"]

DEFAULT_TIMEOUT = 10.0


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
    """``"name"`` or ``"namespace/name"`` in the Hub's alphabet (a string that cannot be a Hub id is a missing path)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _download_hint(repo_id: str, subfolder: Optional[str], revision: Optional[str]) -> str:
    include = f" --include '{subfolder.strip('/')}/*'" if subfolder else ""
    rev = f" --revision {revision}" if revision else ""
    where = f"DIR/{subfolder.strip('/')}" if subfolder else "DIR"
    return (
        f"Download it on a machine with network access (`hf download {repo_id}{rev}{include} --local-dir DIR`, "
        f"or `huggingface-cli download ...` with older huggingface_hub) and pass {where} (a local directory) instead."
    )


def _unavailable(repo_id: str, reason: str, subfolder: Optional[str], revision: Optional[str]) -> HubUnavailableError:
    return HubUnavailableError(
        f"'{repo_id}' is not a local path and the Hugging Face Hub cannot be reached ({reason}); it is not in the "
        f"local Hub cache either. {_download_hint(repo_id, subfolder, revision)}"
    )


def _join(*parts: Optional[str]) -> str:
    return "/".join(p.strip("/") for p in parts if p)


def _from_cache(repo_id, filename, subfolder, revision, cache_dir, repo_type, allow_patterns) -> Optional[str]:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename is not None:
            return hf_hub_download(
                repo_id,
                filename,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                repo_type=repo_type,
                local_files_only=True,
            )
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            repo_type=repo_type,
            allow_patterns=allow_patterns,
            local_files_only=True,
        )
        path = os.path.join(path, subfolder) if subfolder else path
        return path if os.path.isdir(path) else None
    except Exception:  # not cached (LocalEntryNotFoundError and friends): go to the network
        return None


def probe_repo(repo_id, revision=None, repo_type=None, token=None, endpoint=None, timeout=10.0) -> Optional[BaseException]:
    """One request with a hard deadline: ``None`` when the repo answered, else the error."""
    from huggingface_hub import HfApi

    outcome: list = []

    def target():
        try:
            api = HfApi(endpoint=endpoint)
            api.repo_info(repo_id, revision=revision, repo_type=repo_type, token=token, timeout=timeout)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome.append(error)

    thread = threading.Thread(target=target, name=f"hub-probe:{repo_id}", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if not outcome:
        return TimeoutError(f"no answer within {timeout:g} s")
    return outcome[0]


def _classify(error: BaseException, repo_id, subfolder, revision, endpoint) -> Optional[OSError]:
    """The error to raise for a failed probe, or ``None`` to go on (nothing conclusive)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return PermissionError(
            f"'{repo_id}' is a gated repo on the Hugging Face Hub: accept its terms on the Hub and pass `token=` "
            f"(or run `hf auth login`), or download it elsewhere and pass a local directory."
        )
    if isinstance(error, RepositoryNotFoundError):
        return FileNotFoundError(
            f"'{repo_id}' is neither a local path nor a repo on the Hugging Face Hub (or it is private: pass "
            f"`token=`). Check the spelling, or pass a local directory."
        )
    if isinstance(error, RevisionNotFoundError):
        return FileNotFoundError(f"Revision '{revision}' does not exist in the Hub repo '{repo_id}'.")
    if isinstance(error, OfflineModeIsEnabled):
        return _unavailable(repo_id, "offline mode is enabled", subfolder, revision)
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and (status >= 500 or status == 429):
            return _unavailable(repo_id, f"the Hub answered HTTP {status}", subfolder, revision)
        return None  # e.g. 401 on a private repo with a token that can still download: let the download decide
    network_modules = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}
    if isinstance(error, (OSError, TimeoutError)) or type(error).__module__.split(".")[0] in network_modules:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        host = endpoint or "the Hub"
        return _unavailable(repo_id, f"{type(error).__name__} contacting {host}: {reason[:200]}", subfolder, revision)
    return None


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
    timeout: float = DEFAULT_TIMEOUT,
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
            f"'{name}' does not exist locally and is not a valid Hugging Face Hub repo id ('name' or 'namespace/name')."
        )

    cached = _from_cache(name, filename, subfolder, revision, cache_dir, repo_type, allow_patterns)
    if cached is not None:
        return cached
    if local_files_only:
        raise _unavailable(name, "local_files_only=True", subfolder, revision)
    if hub_offline():
        raise _unavailable(name, "offline mode: HF_HUB_OFFLINE=1", subfolder, revision)

    error = probe_repo(name, revision, repo_type, token, endpoint, timeout)
    if error is not None:
        raised = _classify(error, name, subfolder, revision, endpoint)
        if raised is not None:
            raise raised from None

    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        if filename is not None:
            return hf_hub_download(
                name,
                filename,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                repo_type=repo_type,
                token=token,
                endpoint=endpoint,
                etag_timeout=timeout,
            )
        path = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            repo_type=repo_type,
            token=token,
            endpoint=endpoint,
            allow_patterns=allow_patterns,
            etag_timeout=timeout,
        )
    except EntryNotFoundError:
        raise HubFileNotFoundError(f"The Hub repo '{name}' has no file '{_join(subfolder, filename)}'.") from None
    except (HfHubHTTPError, OSError) as error:
        raised = _classify(error, name, subfolder, revision, endpoint)
        if raised is not None:
            raise raised from None
        raise
    path = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isdir(path):
        raise HubFileNotFoundError(f"The Hub repo '{name}' has no folder '{subfolder}'.")
    return path


def hub_file_exists(
    repo_id: str,
    filename: str,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    repo_type: Optional[str] = None,
    endpoint: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Whether ``subfolder/filename`` exists in a Hub repo (``False`` when the Hub cannot be asked)."""
    if hub_offline():
        return False
    from huggingface_hub import HfApi

    outcome: list = []

    def target():
        try:
            outcome.append(
                HfApi(endpoint=endpoint).file_exists(
                    repo_id, _join(subfolder, filename), revision=revision, repo_type=repo_type, token=token
                )
            )
        except BaseException:  # noqa: BLE001
            outcome.append(False)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    return bool(outcome and outcome[0])
