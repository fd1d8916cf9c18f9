"""The hub offline: one line and fast without HF_HUB_OFFLINE; the HF cache used with no network; the tests'
tokenizer lookup. The network is never touched: the hub endpoint is a closed port on this machine."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, fill_hf_cache, locate_tokenizer_files

from minigpt.hub import can_connect, probe_address

pytestmark = pytest.mark.slow  # CLIs in fresh processes against an unreachable hub

GENERATE = str(REPO_ROOT / "scripts" / "generate.py")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


def unreachable_hub_env(hf_home: Path) -> dict[str, str]:
    """HF_HUB_OFFLINE unset, the hub endpoint a closed local port, the HF cache in `hf_home`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "MINIGPT_DEBUG", "MINIGPT_TOKENIZER_DIR", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(hf_home), OMP_NUM_THREADS="1")
    return env


def run(args, env, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_unreachable_hub_is_one_line_and_quiet(tmp_path):
    env = unreachable_hub_env(tmp_path / "hf")
    proc = run([GENERATE, "--prompt", "x"], env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "cannot be reached" in lines[0] and "not in the local cache" in lines[0] and "--model PATH" in lines[0]
    assert "Retry" not in proc.stderr and proc.stdout == ""  # huggingface_hub's retries (~27 s) never ran


def test_unreachable_hub_is_one_bounded_probe_then_the_cache_only(tmp_path, monkeypatch):
    """What makes the offline failure fast, without a stopwatch: one TCP probe with PROBE_TIMEOUT_S, and then
    huggingface_hub asked for cached files only (its network retries are what take ~27 s)."""
    import huggingface_hub

    import minigpt.hub as hub
    from minigpt import CheckpointError
    from minigpt.loading import resolve_checkpoint

    probes, downloads = [], []
    monkeypatch.setattr(hub, "hub_offline_forced", lambda: False)  # the suite runs with HF_HUB_OFFLINE=1
    monkeypatch.setattr(hub, "_probes", {})
    monkeypatch.setattr(hub, "can_connect", lambda host, port, timeout: probes.append(timeout) or False)
    real_download = huggingface_hub.hf_hub_download

    def recording_download(*args, **kwargs):
        downloads.append(kwargs.get("local_files_only"))
        return real_download(*args, **{**kwargs, "cache_dir": str(tmp_path / "empty-cache")})

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
    with pytest.raises(CheckpointError, match="cannot be reached.*not in the local cache"):
        resolve_checkpoint("gpt2")
    assert probes == [hub.PROBE_TIMEOUT_S] and hub.PROBE_TIMEOUT_S <= 2
    assert downloads and all(local_only is True for local_only in downloads)


def test_cached_model_and_tokenizer_load_with_the_hub_unreachable(text_model_dir, tmp_path):
    hf_home = tmp_path / "hf"
    fill_hf_cache(hf_home, "gpt2", text_model_dir)
    proc = run([GENERATE, "--model", "gpt2", "--prompt", "Hello", "--greedy", "--max-new-tokens", "4", "--json"],
               unreachable_hub_env(hf_home))
    assert proc.returncode == 0, proc.stderr
    assert '"new_ids"' in proc.stdout and proc.stderr == ""


def test_a_file_missing_from_the_cache_is_named(text_model_dir, tmp_path):
    hf_home = tmp_path / "hf"
    snapshot = fill_hf_cache(hf_home, "gpt2", text_model_dir)
    (snapshot / "model.safetensors").unlink()
    proc = run([GENERATE, "--model", "gpt2", "--prompt", "Hello"], unreachable_hub_env(hf_home))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "model.safetensors is not in the local cache" in proc.stderr


def test_probe_sees_a_listening_port_and_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert can_connect("127.0.0.1", server.getsockname()[1], timeout=2)
    assert not can_connect("127.0.0.1", closed_port(), timeout=2)


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert probe_address("https://huggingface.co") == ("huggingface.co", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert probe_address("https://huggingface.co") == ("proxy.internal", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert probe_address("https://huggingface.co") == ("huggingface.co", 443)


def test_tests_find_the_tokenizer_in_the_hf_cache(tokenizer_path, tmp_path, monkeypatch):
    """With no $MINIGPT_TOKENIZER_DIR and no ../shared, gpt2's two vocab files in an HF cache are enough."""
    import helpers
    from huggingface_hub import constants

    snapshot = fill_hf_cache(tmp_path / "hf", "gpt2", tokenizer_path)
    monkeypatch.delenv("MINIGPT_TOKENIZER_DIR", raising=False)
    monkeypatch.setattr(helpers, "SHARED_TOKENIZER", tmp_path / "no-shared")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert locate_tokenizer_files(allow_download=False) == (snapshot / "vocab.json", snapshot / "merges.txt")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(LookupError, match="MINIGPT_TOKENIZER_DIR.*HuggingFace cache.*online"):
        locate_tokenizer_files(allow_download=False)
