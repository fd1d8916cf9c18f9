"""The HuggingFace hub, reached quickly or not at all: one fast reachability probe, then the cache or a download.

huggingface_hub alone, with no network and HF_HUB_OFFLINE unset, retries each request for ~27 s before it
gives up. Here a TCP connection to the hub endpoint (or to the proxy the environment names) is tried first,
with a short timeout and DNS included; if it fails, files come from the local cache only
(`local_files_only=True`: no network round trip at all) and a file that is not cached is one clear error.
When the hub answers, `hf_hub_download` runs as usual (etag check, download with its progress bar).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .errors import CheckpointError

PROBE_TIMEOUT_S = 2.0
# A probe's answer is reused this long, so loading a model and then its tokenizer probes once, not twice.
PROBE_REUSE_S = 30.0
_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (monotonic time, reachable): a memo, not state


def hub_endpoint() -> str:
    """The hub URL in use ($HF_ENDPOINT or https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline_forced() -> bool:
    """HF_HUB_OFFLINE=1: never touch the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def probe_address(endpoint: str) -> tuple[str, int]:
    """(host, port) a connection to `endpoint` goes to first: its proxy when the environment names one."""
    url = urlsplit(endpoint)
    host = url.hostname or ""
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_url.hostname or "", proxy_url.port or (443 if proxy_url.scheme == "https" else 80)
    return host, url.port or (443 if url.scheme == "https" else 80)


def can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds, name lookup included.

    The lookup has no timeout of its own (a resolver can hang for many seconds), so the attempt runs in a
    daemon thread and is abandoned when the time is up.
    """
    answer: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except (OSError, ValueError):
            answer.append(False)

    worker = threading.Thread(target=attempt, name="minigpt-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub endpoint cannot be connected to within `timeout` s."""
    if hub_offline_forced():
        return False
    endpoint = hub_endpoint()
    now = time.monotonic()
    seen = _probes.get(endpoint)
    if seen is not None and now - seen[0] < PROBE_REUSE_S:
        return seen[1]
    reachable = can_connect(*probe_address(endpoint), timeout)
    _probes[endpoint] = (time.monotonic(), reachable)
    return reachable


def offline_message(repo_id: str, filename: str) -> str:
    why = "HF_HUB_OFFLINE is set" if hub_offline_forced() else f"{hub_endpoint()} cannot be reached"
    return (f"cannot fetch {repo_id!r} from the HuggingFace hub: offline ({why}), and its {filename} is not in "
            "the local cache; pass a local directory or .safetensors file instead (CLI: --model PATH)")


def hub_download(
    repo_id: str, filename: str, revision: str | None, *, online: bool, missing_ok: bool = False
) -> Path | None:
    """One file of a hub repo: downloaded (or etag-checked) when `online`, else from the cache only.

    Returns None for a file the repo (or, offline, the cache) does not have when `missing_ok`; every other
    failure is a one-line `CheckpointError`.
    """
    import huggingface_hub
    from huggingface_hub import errors

    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                                    local_files_only=not online))
    except errors.LocalEntryNotFoundError:
        if missing_ok and not online:
            return None
        raise CheckpointError(offline_message(repo_id, filename)) from None
    except errors.RemoteEntryNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"hub repo {repo_id!r} has no file {filename!r}") from None
    except errors.GatedRepoError:
        raise CheckpointError(f"hub repo {repo_id!r} is gated: log in with `hf auth login` first") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id!r} is neither a local path nor a repo on the HuggingFace hub") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"hub repo {repo_id!r} has no revision {revision!r}") from None
    except (errors.HFValidationError, OSError) as exc:
        raise CheckpointError(f"cannot fetch {filename} of {repo_id!r} from the hub: {exc}") from None


def quiet_hub_logs() -> None:
    """Keep huggingface_hub's log lines and warnings off the terminal (its download progress bar stays).

    Its library logger is configured when huggingface_hub is first imported, so set the level after that.
    """
    import warnings

    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module=r"huggingface_hub(\..*)?$")
