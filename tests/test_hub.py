"""Downloads from a hub-like server on 127.0.0.1 into the Hugging Face cache layout."""

import base64
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import npgpt
from npgpt import hf_cache, hub
from npgpt.tokenizer import bundled_merges, encoder_json_from_ranks, ranks_from_merges

from hubserver import HubServer, git_blob_sha1

REPO = "openai-community/gpt2"
TOKEN = "hf_secretTOKEN1234567890"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random GPT-2 in the official layout, with GPT-2's tokenizer files, as bytes."""
    path = tmp_path_factory.mktemp("model")
    npgpt.GPT2.random(npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=32), seed=4).save(path)
    merges = bundled_merges()
    vocab = json.dumps(encoder_json_from_ranks(ranks_from_merges(merges.decode()))).encode()
    return {"config.json": (path / "config.json").read_bytes(),
            "model.safetensors": (path / "model.safetensors").read_bytes(),
            "merges.txt": merges, "vocab.json": vocab}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(files, tls_dir, monkeypatch):
    """The hub on http://127.0.0.1:P; large files redirected, as on the real hub, to another host: a file
    store on https://localhost:P2 whose test certificate the clients are told to trust."""
    if shutil.which("openssl"):
        s = HubServer(tls_dir=tls_dir)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", s.ca_bundle)  # requests (npgpt)
        monkeypatch.setenv("SSL_CERT_FILE", s.ca_bundle)  # httpx (huggingface_hub)
    else:  # no way to make a certificate: the files are served by the hub itself
        s = HubServer()
    s.commit = s.add_repo(REPO, files)
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hub-cache")


def client(server, cache, **kw):
    settings = dict(cache_dir=cache, endpoint=server.endpoint, retries=3, backoff=0.01, progress=False)
    settings.update(kw)
    return hub.Hub(**settings)


def weights_sha(files):
    return hashlib.sha256(files["model.safetensors"]).hexdigest()


def tree(cache):
    out = []
    for root, dirs, names in os.walk(cache):
        out += [os.path.relpath(os.path.join(root, n), cache) for n in names]
    return sorted(out)


# ------------------------------------------------------------------------------------------ download and reuse


def test_first_download_lays_out_the_cache_as_huggingface_hub(server, cache, files):
    path = client(server, cache).snapshot("gpt2")
    folder = os.path.join(cache, "models--openai-community--gpt2")
    assert path == os.path.join(folder, "snapshots", server.commit)
    assert sorted(os.listdir(path)) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    for name, data in files.items():
        link = os.path.join(path, name)
        assert os.path.islink(link) and not os.path.isabs(os.readlink(link))
        blob = os.path.realpath(link)
        assert os.path.dirname(blob) == os.path.realpath(os.path.join(folder, "blobs"))
        expected = hashlib.sha256(data).hexdigest() if len(data) > 10_000 else git_blob_sha1(data)
        assert os.path.basename(blob) == expected
        assert open(link, "rb").read() == data
    assert open(os.path.join(folder, "refs", "main")).read() == server.commit
    assert not [f for f in tree(cache) if f.endswith(".incomplete")]
    # the weights travelled once, from the file URL the hub redirected to, without the token (none was set)
    assert len(server.requests("GET", "/cdn/" + weights_sha(files))) == 1


def test_the_downloaded_model_is_the_model(server, cache, files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    model = npgpt.load("gpt2")
    original = tmp_path / "original"
    original.mkdir()
    for name in ("config.json", "model.safetensors"):
        (original / name).write_bytes(files[name])
    np.testing.assert_array_equal(model([1, 2, 3]), npgpt.load(original)([1, 2, 3]))
    assert model.name == "gpt2"


def test_a_cached_model_is_reused_without_asking_for_the_weights(server, cache):
    client(server, cache).snapshot("gpt2")
    server.log.clear()
    client(server, cache).snapshot("gpt2")
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in server.log] == [("HEAD", "config.json")]


def test_offline_mode_uses_the_cache_and_sends_nothing(server, cache):
    client(server, cache).snapshot("gpt2")
    server.log.clear()
    path = client(server, cache, offline=True).snapshot("gpt2")
    assert os.path.isfile(os.path.join(path, "model.safetensors")) and server.log == []


def test_offline_mode_without_the_model_names_it(server, cache):
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache, offline=True).snapshot("gpt2")
    message = str(e.value)
    assert "gpt2 (openai-community/gpt2) is not in the cache" in message and "HF_HUB_OFFLINE" in message
    assert "npgpt download gpt2" in message and server.log == []


def test_an_unreachable_hub_falls_back_to_the_cache(server, cache):
    client(server, cache).snapshot("gpt2")
    dead = hub.Hub(cache_dir=cache, endpoint="http://127.0.0.1:9", retries=1, backoff=0.01, progress=False)
    assert dead.snapshot("gpt2").endswith(server.commit)
    with pytest.raises(npgpt.HubError, match="cannot reach http://127.0.0.1:9.*not cached"):
        dead.snapshot("distilgpt2")


def test_revisions_branches_tags_and_commits(server, cache, files):
    other = dict(files, **{"config.json": files["config.json"].replace(b'"n_ctx"', b'"n_ctx" ')})
    tagged = server.add_repo(REPO, other, refs=("v1",))
    c = client(server, cache)
    assert c.snapshot("gpt2", revision="v1").endswith(tagged)
    assert open(os.path.join(cache, "models--openai-community--gpt2", "refs", "v1")).read() == tagged
    assert c.snapshot("gpt2").endswith(server.commit)
    server.log.clear()
    assert c.snapshot("gpt2", revision=tagged).endswith(tagged)  # a cached commit: not even a HEAD
    assert server.log == []
    with pytest.raises(npgpt.HubError, match="no revision 'v9'"):
        c.snapshot("gpt2", revision="v9")


def test_a_moved_repo_is_followed(server, cache):
    server.moved["gpt2-old/gpt2"] = REPO
    assert client(server, cache).snapshot("gpt2-old/gpt2").endswith(server.commit)


def test_tokenizer_files_are_optional(server, cache, files):
    server.add_repo("someone/small-gpt2", {k: files[k] for k in ("config.json", "model.safetensors")})
    path = client(server, cache).snapshot("someone/small-gpt2")
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    folder = os.path.join(cache, "models--someone--small-gpt2")
    assert os.path.exists(os.path.join(folder, ".no_exist", os.path.basename(path), "merges.txt"))
    server.log.clear()
    client(server, cache).snapshot("someone/small-gpt2")
    assert len(server.log) == 1  # the missing files are remembered, as huggingface_hub does


# ------------------------------------------------------------------------------------------------ interruptions


def test_a_connection_cut_mid_file_is_resumed_with_a_range_request(server, cache, files):
    server.faults.cut_after[weights_sha(files)] = [600_000]
    path = client(server, cache).snapshot("gpt2")
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == files["model.safetensors"]
    gets = server.requests("GET", "/cdn/" + weights_sha(files))
    assert len(gets) == 2 and "Range" not in gets[0].headers
    resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 600_000 - 65_536 < resumed_at <= 600_000  # what arrived before the cut was kept (to a 64 kB read)


def test_a_download_left_incomplete_by_an_earlier_run_is_resumed(server, cache, files):
    blobs = os.path.join(cache, "models--openai-community--gpt2", "blobs")
    os.makedirs(blobs)
    with open(os.path.join(blobs, weights_sha(files) + ".incomplete"), "wb") as f:
        f.write(files["model.safetensors"][:250_000])
    client(server, cache).snapshot("gpt2")
    gets = server.requests("GET", "/cdn/" + weights_sha(files))
    assert [g.headers.get("Range") for g in gets] == ["bytes=250000-"]


def test_a_server_that_ignores_range_starts_over(server, cache, files):
    server.faults.cut_after[weights_sha(files)] = [300_000]
    server.faults.no_range = True
    path = client(server, cache).snapshot("gpt2")
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == files["model.safetensors"]


def test_server_errors_are_retried_then_succeed(server, cache):
    server.faults.errors = [503, 502]
    assert client(server, cache).snapshot("gpt2")
    assert [r.method for r in server.log[:3]] == ["HEAD", "HEAD", "HEAD"]


def test_too_many_requests_waits_as_told(server, cache):
    server.faults.errors, server.faults.retry_after = [429], "0.2"
    start = time.monotonic()
    client(server, cache).snapshot("gpt2")
    assert time.monotonic() - start >= 0.2


def test_a_server_that_keeps_failing_gives_up_with_a_clear_error(server, cache):
    server.faults.errors = [500] * 10
    with pytest.raises(npgpt.HubError, match="kept failing \\(HTTP 500\\) after 4 attempts; try again later"):
        client(server, cache).snapshot("gpt2")
    assert not os.path.exists(os.path.join(cache, "models--openai-community--gpt2"))


def test_a_checksum_mismatch_is_an_error_and_nothing_is_kept(server, cache, files):
    server.faults.corrupt.add(weights_sha(files))
    with pytest.raises(npgpt.HubError, match="model.safetensors arrived corrupt.*nothing was kept"):
        client(server, cache).snapshot("gpt2")
    assert tree(cache) == []  # not a blob, not a partial file, not a link, not a ref


def test_a_wrong_announced_hash_for_a_small_file_is_caught_too(server, cache):
    server.faults.etag_override = "0" * 40
    with pytest.raises(npgpt.HubError, match="config.json arrived corrupt"):
        client(server, cache).snapshot("gpt2")
    assert tree(cache) == []


def test_two_processes_fetching_the_same_model_do_not_corrupt_it(server, cache, files):
    server.faults.slow = 0.01  # ~25 chunks of 64 kB: the two overlap
    code = ("import sys; from npgpt import hub; "
            "print(hub.Hub(cache_dir=sys.argv[1], endpoint=sys.argv[2], progress=False).snapshot('gpt2'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, cache, server.endpoint], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    path = outputs[0][0].strip()
    assert path == outputs[1][0].strip()
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == files["model.safetensors"]
    # the second waited for the first, then reused its file
    assert len(server.requests("GET", "/cdn/" + weights_sha(files))) == 1


# ------------------------------------------------------------------------------------------------------ refusals


def test_not_found_names_the_repo(server, cache):
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache).snapshot("nobody/nothing")
    assert str(e.value).startswith("nobody/nothing: not found on http://127.0.0.1:")
    assert tree(cache) == []


def test_a_config_that_is_not_gpt2_stops_before_the_weights(server, cache, files):
    server.add_repo("meta/llama", {"config.json": b'{"model_type": "llama", "n_layer": 2}',
                                   "model.safetensors": files["model.safetensors"]})
    with pytest.raises(npgpt.ConfigError, match="GPT-2 models only"):
        client(server, cache).snapshot("meta/llama")
    assert server.requests(contains="model.safetensors") == [] and tree(cache) == []


def test_a_repo_with_only_a_pickle_checkpoint_is_refused(server, cache, files):
    server.add_repo("old/gpt2-bin", {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x02" * 6000})
    with pytest.raises(npgpt.HubError, match="no model.safetensors; npgpt loads only safetensors"):
        client(server, cache).snapshot("old/gpt2-bin")
    assert server.requests(contains="pytorch_model.bin") == []


@pytest.mark.parametrize("name", ["../etc", "a/../b", "org/name/extra", "org/..", "/abs", "a--b/c", "org/na me"])
def test_names_that_could_escape_the_cache_are_refused(server, cache, name):
    with pytest.raises(npgpt.HubError, match="not a valid model name"):
        client(server, cache).snapshot(name)
    assert server.log == []


@pytest.mark.parametrize("revision", ["../../x", "main/../../x", "/main", "a//b"])
def test_revisions_that_could_escape_are_refused(server, cache, revision):
    with pytest.raises(npgpt.HubError, match="not a valid revision"):
        client(server, cache).snapshot("gpt2", revision=revision)


def test_hashes_and_shard_names_from_the_server_are_checked(server, cache, files):
    server.faults.etag_override = "../../../../tmp/evil"
    with pytest.raises(npgpt.HubError, match="no usable hash"):
        client(server, cache).snapshot("gpt2")
    server.faults.etag_override = None
    index = json.dumps({"weight_map": {"wte.weight": "../evil.safetensors"}}).encode()
    server.add_repo("sharded/gpt2", {"config.json": files["config.json"], "model.safetensors.index.json": index})
    with pytest.raises(npgpt.HubError, match="refusing shard name '../evil.safetensors'"):
        client(server, cache).snapshot("sharded/gpt2")


def test_plain_http_redirects_elsewhere_are_refused(server, cache):
    server.faults.lfs_location = server.endpoint.replace("127.0.0.1", "localhost") + "/cdn/{sha}"
    with pytest.raises(npgpt.HubError, match="refusing a redirect to http://localhost"):
        client(server, cache).snapshot("gpt2")


# ----------------------------------------------------------------------------------------------- the token, TLS


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_the_token_goes_to_the_endpoint_only_never_to_the_file_host(server, cache):
    client(server, cache, token=TOKEN).snapshot("gpt2")
    hub_requests, cdn_requests = server.requests(server="hub"), server.requests(server="cdn")
    assert hub_requests and cdn_requests
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in hub_requests)
    assert all("Authorization" not in r.headers for r in cdn_requests)
    assert all(r.path.startswith("/cdn/") for r in cdn_requests)


def npgpt_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "npgpt", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_the_token_never_appears_in_output_or_errors(server, cache):
    env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_CACHE": cache, "HF_TOKEN": TOKEN}
    ok = npgpt_cli("download", "gpt2", env=env)
    assert ok.returncode == 0 and ok.stdout.strip().endswith(server.commit)
    missing = npgpt_cli("download", "nobody/nothing", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"npgpt: error: nobody/nothing: not found on {server.endpoint} (check the name; private or gated repos "
        "need HF_TOKEN)"]
    generated = npgpt_cli("generate", "Hello", "--model", "gpt2", "--max-new-tokens", "3", env=env)
    assert generated.returncode == 0, generated.stderr
    for r in (ok, missing, generated):
        assert TOKEN not in r.stdout + r.stderr
    assert any(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in server.log)
    assert f"{TOKEN}" not in repr(hub.Hub(cache_dir=cache, token=TOKEN))


def test_errors_from_the_client_do_not_contain_the_token(server, cache):
    server.faults.errors = [500] * 10
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache, token=TOKEN).snapshot("gpt2")
    assert TOKEN not in str(e.value)
    dead = hub.Hub(cache_dir=cache, endpoint="http://127.0.0.1:9", token=TOKEN, retries=0, progress=False)
    with pytest.raises(npgpt.HubError) as e:
        dead.snapshot("gpt2")
    assert TOKEN not in str(e.value)


# ------------------------------------------------------------------------------------------- transformers' cache


def write_cache_as_huggingface_hub(cache, repo_id, commit, files):
    """The layout huggingface_hub writes: blobs named by etag, relative links, refs/main."""
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if len(data) > 10_000 else git_blob_sha1(data)
        blob = os.path.join(folder, "blobs", etag)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        snapshot = os.path.join(folder, "snapshots", commit)
        os.makedirs(snapshot, exist_ok=True)
        os.symlink(os.path.join("..", "..", "blobs", etag), os.path.join(snapshot, name))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(commit)


def test_a_cache_written_by_huggingface_hub_is_read_without_downloading(server, cache, files, monkeypatch):
    write_cache_as_huggingface_hub(cache, REPO, server.commit, files)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert npgpt.load("gpt2")([1, 2]).shape == (2, 50257)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    npgpt.load("gpt2")
    assert {r.method for r in server.log} == {"HEAD"}  # what to check, nothing to download
    assert not server.requests(contains="model.safetensors")


def test_hf_home_and_the_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub.cache_dir_from_env() == str(tmp_path / "hf" / "hub")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_dir_from_env() == str(tmp_path / ".cache" / "huggingface" / "hub")


def huggingface_hub_available():
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not huggingface_hub_available(), reason="needs huggingface_hub (the golden extra)")
def test_huggingface_hub_downloads_and_npgpt_reads_them(server, cache, monkeypatch):
    code = ("import sys; from huggingface_hub import hf_hub_download as d; "
            "[d('openai-community/gpt2', f, cache_dir=sys.argv[1]) for f in ('config.json', 'model.safetensors')]")
    env = {**os.environ, "HF_ENDPOINT": server.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1"}
    done = subprocess.run([sys.executable, "-c", code, cache], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    server.log.clear()
    path = client(server, cache, offline=True).snapshot("gpt2")
    assert path.endswith(server.commit) and server.log == []
    assert npgpt.load(path)([1]).shape == (1, 50257)


@pytest.mark.skipif(not huggingface_hub_available(), reason="needs transformers (the golden extra)")
def test_transformers_loads_what_npgpt_downloaded(server, cache, files):
    client(server, cache).snapshot("gpt2")
    code = ("import sys, torch; from transformers import GPT2LMHeadModel; "
            "m = GPT2LMHeadModel.from_pretrained('openai-community/gpt2', cache_dir=sys.argv[1], "
            "local_files_only=True); print(m(torch.tensor([[1, 2, 3]])).logits[0, -1, :4].tolist())")
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("needs torch")
    done = subprocess.run([sys.executable, "-c", code, cache], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = npgpt.load(client(server, cache).snapshot("gpt2"))([1, 2, 3])[-1, :4]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# -------------------------------------------------------------------------------------------- progress, the CLI


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_bytes_rate_and_time_left():
    stream = FakeTerminal()
    bar = hub.Progress("model.safetensors", 50_000_000, enabled=True, stream=stream)
    bar.last = -1.0
    bar.update(20_000_000)
    bar.close()
    text = stream.getvalue()
    assert "model.safetensors:" in text and "20.0 / 50.0 MB" in text and "MB/s" in text and "left" in text
    quiet = io.StringIO()
    silent = hub.Progress("x", 50_000_000, enabled=False, stream=quiet)
    silent.update(10)
    silent.close()
    assert quiet.getvalue() == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(server, cache, capfd):
    hub.Hub(cache_dir=cache, endpoint=server.endpoint, backoff=0.01).snapshot("gpt2")
    assert capfd.readouterr().err == ""


def test_cli_download_and_models(server, cache):
    env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_CACHE": cache}
    empty = npgpt_cli("models", env=env)
    assert empty.returncode == 0 and "no models" in empty.stdout
    r = npgpt_cli("download", "gpt2", "--quiet", env=env)
    assert r.returncode == 0 and r.stdout.strip() == os.path.join(cache, "models--openai-community--gpt2",
                                                                  "snapshots", server.commit)
    listing = npgpt_cli("models", env=env)
    assert listing.returncode == 0
    line = next(line for line in listing.stdout.splitlines() if line.startswith(REPO))
    assert "MB" in line and f"main {server.commit[:10]}" in line
    offline = npgpt_cli("generate", "Hi", "--model", "gpt2", "--max-new-tokens", "2",
                        env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0 and offline.stdout.startswith("Hi")
    missing = npgpt_cli("generate", "Hi", "--model", "gpt2-xl", env={**env, "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 1 and "gpt2-xl (openai-community/gpt2-xl) is not in the cache" in missing.stderr


def test_a_sharded_checkpoint_is_fetched_shard_by_shard(server, cache, files, tmp_path):
    from safetensors.numpy import load, save

    tensors = load(files["model.safetensors"])
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    repo_files = {"config.json": files["config.json"],
                  "model.safetensors.index.json": json.dumps(
                      {"weight_map": {n: shard for shard, ns in shards.items() for n in ns}}).encode()}
    repo_files.update({shard: save({n: tensors[n] for n in ns}) for shard, ns in shards.items()})
    server.add_repo("someone/sharded", repo_files)
    path = client(server, cache).snapshot("someone/sharded")
    assert sorted(os.listdir(path)) == sorted(repo_files)
    np.testing.assert_array_equal(npgpt.load(path)([5, 6]), npgpt.GPT2.random(
        npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=32), seed=4)([5, 6]))


def test_an_unreachable_hub_is_one_line_and_quick(tmp_path):
    start = time.monotonic()
    r = npgpt_cli("generate", "Hi", "--model", "gpt2",
                  env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert time.monotonic() - start < 20  # one quick retry, not minutes of backoff
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "npgpt: error: gpt2 (openai-community/gpt2): cannot reach http://127.0.0.1:9 (connection refused) and the "
        "model is not cached; offline, use a local directory with config.json and "
        "model.safetensors (--model path/to/dir, npgpt.load('path/to/dir')), a mirror (HF_ENDPOINT), or an "
        "untrained model saved with python -c \"import npgpt; npgpt.GPT2.random('gpt2').save('gpt2-random')\" "
        "(then --model gpt2-random)"]


# ------------------------------------------------------------------------------- a damaged cache is repaired


def damage(path, truncate_to=None):
    """Cut a cached file short, or flip one of its bytes (same size), through its link."""
    blob = os.path.realpath(path)
    if truncate_to is not None:
        os.truncate(blob, truncate_to)
        return
    data = bytearray(open(blob, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(blob, "wb") as f:
        f.write(data)


def test_a_truncated_cached_checkpoint_is_fetched_again(server, cache, files):
    path = client(server, cache).snapshot("gpt2")
    weights = os.path.join(path, "model.safetensors")
    damage(weights, truncate_to=1000)
    assert client(server, cache, offline=True).snapshot("gpt2") == path  # offline: the cache as it is
    assert os.path.getsize(weights) == 1000
    assert client(server, cache).snapshot("gpt2") == path
    assert open(weights, "rb").read() == files["model.safetensors"]
    assert len(server.requests("GET", "/cdn/" + weights_sha(files))) == 2
    assert not [f for f in tree(cache) if f.endswith(".incomplete")]


def test_a_large_cached_file_is_checked_by_the_size_the_hub_announces(server, cache, files, monkeypatch):
    monkeypatch.setattr(hf_cache, "_HASH_LIMIT", 1000)  # the test files stand for ones too large to hash on each load
    c = client(server, cache)
    path = c.snapshot("gpt2")
    server.log.clear()
    c.snapshot("gpt2")
    assert {r.method for r in server.log} == {"HEAD"}  # sizes compared, nothing fetched
    assert server.requests("HEAD", "model.safetensors")
    damage(os.path.join(path, "model.safetensors"), truncate_to=len(files["model.safetensors"]) - 1)
    c.snapshot("gpt2")
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == files["model.safetensors"]


@pytest.mark.parametrize("name", ["config.json", "vocab.json"])
def test_a_small_cached_file_that_fails_its_hash_is_fetched_again(server, cache, files, name):
    c = client(server, cache)
    path = c.snapshot("gpt2")
    damage(os.path.join(path, name))
    server.log.clear()
    c.snapshot("gpt2")
    assert open(os.path.join(path, name), "rb").read() == files[name]
    assert not server.requests(contains="model.safetensors")  # the intact files cost not even a HEAD
    assert not server.requests(contains="merges.txt")


# --------------------------------------------------------------------------- when the hub fails, the cache serves


@pytest.mark.parametrize("status, retry_after", [(500, None), (503, None), (429, "30")])
def test_a_cached_model_is_used_at_once_when_the_hub_keeps_failing(server, cache, status, retry_after):
    path = client(server, cache).snapshot("gpt2")
    server.log.clear()
    server.faults.errors, server.faults.retry_after = [status] * 20, retry_after
    patient = hub.Hub(cache_dir=cache, endpoint=server.endpoint, progress=False)  # 5 retries, 1 s backoff
    start = time.monotonic()
    assert patient.snapshot("gpt2") == path
    assert time.monotonic() - start < 3  # one quick retry, not 31 s of backoff
    assert len(server.log) == 2


def test_a_cached_model_is_used_when_the_hub_does_not_answer_in_time(server, cache, monkeypatch):
    path = client(server, cache).snapshot("gpt2")
    monkeypatch.setattr(hub, "_QUICK_TIMEOUT", 0.1)  # 5 s, as the test would wait for it
    server.faults.stall = 1.5
    start = time.monotonic()
    assert client(server, cache).snapshot("gpt2") == path
    assert time.monotonic() - start < 1.0


# --------------------------------------------------------------------------------------- retries and progress


def test_a_download_that_keeps_getting_somewhere_is_not_given_up(server, cache, files):
    server.faults.cut_after[weights_sha(files)] = [200_000] * 5
    path = client(server, cache, retries=1).snapshot("gpt2")
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == files["model.safetensors"]
    assert len(server.requests("GET", "/cdn/" + weights_sha(files))) == 6


def test_a_download_that_gets_nowhere_gives_up_and_keeps_what_arrived(server, cache, files):
    server.faults.cut_after[weights_sha(files)] = [200_000] + [0] * 5
    with pytest.raises(npgpt.HubError, match="downloading model.safetensors kept failing .* run again to resume"):
        client(server, cache, retries=2).snapshot("gpt2")
    # the cut that brought bytes starts the count again: then the 2 retries, which bring none
    assert len(server.requests("GET", "/cdn/" + weights_sha(files))) == 3
    partial = os.path.join(cache, "models--openai-community--gpt2", "blobs", weights_sha(files) + ".incomplete")
    assert 200_000 - 65_536 < os.path.getsize(partial) <= 200_000


# ------------------------------------------------------------------------------------ a disk that fails


class FillingDisk:
    """A file being written on a disk that fails (ENOSPC: fills up) once `room` bytes are written."""

    def __init__(self, file, room, code):
        self.file, self.room, self.code = file, room, code

    def write(self, data):
        if len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def fail_downloads_after(monkeypatch, room, code):
    """The blobs being downloaded (*.incomplete) are written to a disk that fails after `room` bytes."""
    real_open = open

    def opener(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        writing = str(path).endswith(".incomplete") and mode[0] in "wa"
        return FillingDisk(file, room, code) if writing else file

    monkeypatch.setattr(hub, "open", opener, raising=False)


def test_a_full_disk_names_the_file_and_what_to_do_and_frees_the_space(server, cache, files, monkeypatch):
    old = client(server, cache).snapshot("gpt2")
    weights = files["model.safetensors"] + b" "  # a new commit on main, with new weights to fetch
    server.add_repo(REPO, dict(files, **{"model.safetensors": weights}))
    fail_downloads_after(monkeypatch, 300_000, errno.ENOSPC)
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache).snapshot("gpt2")
    partial = os.path.join(cache, "models--openai-community--gpt2", "blobs",
                           hashlib.sha256(weights).hexdigest() + ".incomplete")
    assert str(e.value) == (f"gpt2 (openai-community/gpt2): the disk is full: cannot write {partial}, a file of "
                            f"{len(weights) / 1e6:.1f} MB; free some space, or set HF_HUB_CACHE to a directory "
                            "on a disk with room")
    assert not os.path.exists(partial)  # it is what filled the disk
    assert client(server, cache, offline=True).snapshot("gpt2") == old  # what was cached is untouched


def test_a_write_error_while_downloading_names_the_file(server, cache, monkeypatch):
    fail_downloads_after(monkeypatch, 300_000, errno.EIO)
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache).snapshot("gpt2")
    assert "cannot use the cache: " in str(e.value) and ".incomplete: Input/output error; " in str(e.value)
    assert "\n" not in str(e.value) and "[Errno" not in str(e.value)
    assert tree(cache) == []  # a first download leaves nothing behind


def test_a_cache_that_cannot_be_written_is_one_line_naming_the_path(server, tmp_path):
    (tmp_path / "file").write_text("")
    cache = str(tmp_path / "file" / "cache")
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache).snapshot("gpt2")
    assert str(e.value) == (f"gpt2 (openai-community/gpt2): cannot use the cache: {cache}: Not a directory; "
                            "make it writable, or set HF_HUB_CACHE to a directory that is")


# ---------------------------------------------------------------------------------- credentials in HF_ENDPOINT


def test_a_login_in_hf_endpoint_is_used_but_never_shown(server, cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint.replace("http://", "http://someone:pa%40ss@"))
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    c = hub.Hub.from_env(progress=False)
    assert c.endpoint == server.endpoint and "pa" + "%40ss" not in repr(c) and TOKEN not in repr(c)
    c.snapshot("gpt2")
    login = "Basic " + base64.b64encode(b"someone:pa@ss").decode()
    assert all(r.headers.get("Authorization") == login for r in server.requests(server="hub"))
    with pytest.raises(npgpt.HubError) as e:
        c.snapshot("nobody/nothing")
    messages = [str(e.value)]
    for endpoint in ("http://someone:pa%40ss@127.0.0.1:9", "ftp://someone:pa%40ss@example.org"):
        with pytest.raises(npgpt.HubError) as e:
            hub.Hub(cache_dir=cache, endpoint=endpoint, retries=0, progress=False).snapshot("distilgpt2")
        messages.append(str(e.value))
    assert server.endpoint in messages[0] and "cannot reach http://127.0.0.1:9 " in messages[1]
    assert messages[2] == "HF_ENDPOINT must be an http(s) URL, got 'ftp://example.org'"
    assert not [m for m in messages if "pa%40ss" in m or "pa@ss" in m or "someone" in m or TOKEN in m]


def test_a_redirect_with_a_login_is_refused_without_showing_it(server, cache):
    server.faults.lfs_location = server.endpoint.replace("http://127.0.0.1", "http://someone:secret@localhost") \
        + "/cdn/{sha}?signature=secret"
    with pytest.raises(npgpt.HubError) as e:
        client(server, cache).snapshot("gpt2")
    assert "refusing a redirect to http://localhost:" in str(e.value) and "secret" not in str(e.value)
