"""Hostile checkpoint directories (issue 14, classes 1-3, 10, 11): a clear error, contained reads, nothing changed.

Every case starts from a real checkpoint written by ``CheckpointLayout(...).write`` and is drawn
by ``loadspec.strategies.hostile``: byte flips, truncations and lying lengths of real shard
headers, headers rewritten with one lie, index lies (types, traversal, absolute paths,
devices, a sibling directory's shard, FIFOs, directories, symlinks out, missing, phantom,
misplaced and duplicated entries), directories without a usable shard, and hostile
``config.json`` files. Each case asserts that

* the reader (``iter_checkpoint``, ``shard_files``) and the reference API (``first_load`` on a
  fresh model, ``reload`` on a loaded one) raise ``CheckpointFormatError`` (a ``ValueError``)
  whose message names the file or the tensor; ``config.json`` cases raise the E2E path's
  ``CheckpointError`` (``inspect_checkpoint``) naming ``config.json``;
* both models are bit-identical afterwards (the suite's ``snapshot``: tensors and host mirrors);
* no file outside the checkpoint directory was opened (a ``sys.addaudithook`` on ``open``);
* the case ran within ``CASE_SECONDS`` (a ``SIGALRM`` guard: a FIFO that blocked would fail the
  case, not hang the run) and raised peak RSS by less than ``CASE_RSS_BYTES``.

A byte flip in a header may leave a valid file; such a case must then read exactly as the
``safetensors`` library reads it (a differential check), and is counted as ``accepted``.

The number of cases scales with the Hypothesis profile: ``weight * max_examples *
max(1, max_examples // 60)`` per test, i.e. linear up to ``loadspec-ci`` (60: a few hundred
cases in all) and quadratic beyond (``loadspec-nightly``, 400: more than 10,000). Set
``LOADSPEC_HOSTILE_REPORT=<file>`` to get the counts as JSON; they are also printed at the end
of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.assertions import assert_unchanged, snapshot
from loadspec.conformance.e2e.checkpoints import CheckpointError, inspect_checkpoint, load_tokenizer
from loadspec.conformance.e2e.forward import ConfigError, spec_from_hf_config
from loadspec.reference import api
from loadspec.reference.checkpoint import iter_checkpoint, open_checkpoint, read_config, shard_files
from loadspec.reference.errors import CheckpointFormatError
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.hostile import (
    OUTSIDE_FILE,
    SIBLING,
    BaseCheckpoint,
    HostileCase,
    config_cases,
    hostile_cases,
    write_case,
)
from loadspec.strategies.layouts import CheckpointLayout

CASE_SECONDS = 10.0
CASE_RSS_BYTES = 256 * 2**20
SPEC = DEFAULT_SPEC
DOCUMENTED = (CheckpointFormatError,)
"""The only exception types a rejected checkpoint may raise from the reader and the reference API."""

STATS: Counter[str] = Counter({"undocumented exceptions": 0, "reads outside": 0, "changed models": 0})
EXCEPTIONS: Counter[str] = Counter()


# ------------------------------------------------------------------ profile scaling
def _examples(weight: int) -> int:
    current = settings.default.max_examples
    return weight * current * max(1, current // 60)


def _hostile(weight: int) -> settings:
    return settings(max_examples=_examples(weight), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------ watching opens
_WATCH: dict[str, bool] = {"on": False}
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if _WATCH["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # an audit hook cannot be removed: it records only while _WATCH["on"]
_IGNORED = tuple({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, Path(api.__file__).parents[1],
                                                    Path(torch.__file__).parent)})


@contextlib.contextmanager
def _watched(inside: Path) -> Iterator[list[str]]:
    """Yield the list of files opened outside ``inside`` while the block runs (interpreter files ignored)."""
    _OPENED.clear()
    _WATCH["on"] = True
    outside: list[str] = []
    try:
        yield outside
    finally:
        _WATCH["on"] = False
        root = os.path.realpath(inside)
        for path in _OPENED:
            resolved = os.path.realpath(path)
            if resolved == root or resolved.startswith(root + os.sep):
                continue
            if resolved.startswith(_IGNORED) and not resolved.startswith(("/dev", "/proc", "/etc")):
                continue
            outside.append(path)


class _Timeout(BaseException):  # noqa: N818 - not an Exception: nothing under test may catch it
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise _Timeout(f"the case ran over {seconds} s (a blocking open or read?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raised(call: Callable[[], object]) -> Exception | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - every type is recorded and checked by the caller
        return exc
    return None


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def _layout(max_shard_size: int | None) -> CheckpointLayout:
    return CheckpointLayout(SPEC, producer="autofp8", kv_scales={"k": 0.5, "v": 0.25}, max_shard_size=max_shard_size)


@pytest.fixture(scope="module")
def bases(root):
    """A single-file and a sharded (indexed) real checkpoint, read into memory."""
    out = {}
    for key, size in (("single", None), ("sharded", 4096)):
        directory = _layout(size).write(root / f"base-{key}")
        out[key] = BaseCheckpoint.read(directory)
    assert out["sharded"].index is not None and len(out["sharded"].shards) >= 2
    return out


class Models:
    """A freshly built model and a loaded one, with their snapshots; rebuilt only if a case changed them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.adapter = ReferenceAdapter()
        self.reset()

    def reset(self) -> None:
        self.fresh = api.build(SPEC)
        self.loaded = api.build(SPEC)
        api.first_load(self.loaded, self.directory)
        self.before = (self.state(self.fresh), self.state(self.loaded))

    def state(self, model) -> dict:
        return snapshot(self.adapter.kernel_tensors(model), self.adapter.host_mirrors(model))

    def assert_unchanged(self, case: HostileCase) -> None:
        try:
            assert_unchanged(f"fresh model after {case.description}", self.before[0], self.state(self.fresh), "LOAD-6")
            assert_unchanged(f"loaded model after {case.description}", self.before[1], self.state(self.loaded),
                             "RELOAD-9")
        except BaseException:
            STATS["changed models"] += 1
            self.reset()
            raise


@pytest.fixture(scope="module")
def models(root):
    return Models(_layout(None).write(root / "model-source"))


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    STATS["exception types"] = len(EXCEPTIONS)
    summary = {"stats": {key: STATS[key] for key in sorted(STATS)}, "exceptions": dict(sorted(EXCEPTIONS.items()))}
    target = os.environ.get("LOADSPEC_HOSTILE_REPORT")
    if target:
        Path(target).write_text(json.dumps(summary, indent=2))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nhostile checkpoints: {json.dumps(summary)}")


# ------------------------------------------------------------------ the check
def _names_it(message: str, case: HostileCase, directory: Path) -> bool:
    names = [str(directory) if name == "<dir>" else name for name in case.names]
    return any(name in message for name in names)


def _same_as_safetensors(directory: Path) -> None:
    """An accepted directory reads exactly as ``safetensors`` reads it."""
    checkpoint = open_checkpoint(directory)
    for shard in checkpoint.shards:
        with safe_open(str(shard.path), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(shard.tensors), shard.path
            for name in handle.keys():
                expected, got = handle.get_tensor(name), shard.read(name)
                assert (got.dtype, got.shape) == (expected.dtype, expected.shape), name
                assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name


def _check_case(base: BaseCheckpoint, case: HostileCase, models: Models, root: Path) -> None:
    work = Path(tempfile.mkdtemp(dir=root))
    try:
        directory = write_case(base, case, work)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        with _watched(directory) as outside, _deadline(CASE_SECONDS):
            raised = {"iter_checkpoint": _raised(lambda: list(iter_checkpoint(directory))),
                      "shard_files": _raised(lambda: shard_files(directory))}
            accepted = raised["iter_checkpoint"] is None and raised["shard_files"] is None
            if not accepted:
                raised["first_load"] = _raised(lambda: api.first_load(models.fresh, directory))
                raised["reload"] = _raised(lambda: api.reload(models.loaded, directory))
        elapsed = time.perf_counter() - start
        STATS["cases"] += 1
        STATS[f"family {case.family}"] += 1
        if outside:
            STATS["reads outside"] += 1
        assert not outside, f"{case.description}: opened outside {directory}: {outside}"
        if accepted:
            assert case.may_be_valid, f"{case.description}: accepted by the reader"
            STATS["accepted (valid after the flip)"] += 1
            _same_as_safetensors(directory)
        else:
            for where, exc in raised.items():
                EXCEPTIONS[type(exc).__name__] += 1
                if not isinstance(exc, DOCUMENTED):
                    STATS["undocumented exceptions"] += 1
                assert isinstance(exc, DOCUMENTED), f"{case.description}: {where} raised {exc!r}"
                assert isinstance(exc, ValueError)
                assert _names_it(str(exc), case, directory), \
                    f"{case.description}: {where}'s message names none of {case.names}: {exc}"
        models.assert_unchanged(case)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
        assert elapsed < CASE_SECONDS and grew < CASE_RSS_BYTES, (case.description, elapsed, grew)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ the tests
@_hostile(2)
@given(data=st.data())
def test_corrupt_shard_bytes_are_rejected(data, bases, models, root):
    """Truncations, header byte flips and lying header lengths of real shards [class 1]."""
    base = bases[data.draw(st.sampled_from(["single", "sharded"]), label="base")]
    case = data.draw(hostile_cases(base, ("truncate", "flip", "length")), label="case")
    _check_case(base, case, models, root)


@_hostile(2)
@given(data=st.data())
def test_lying_headers_are_rejected(data, bases, models, root):
    """Real headers rewritten with one lie: dtype, shape, offsets, entries, metadata, JSON [class 1]."""
    base = bases[data.draw(st.sampled_from(["single", "sharded"]), label="base")]
    case = data.draw(hostile_cases(base, ("header",)), label="case")
    _check_case(base, case, models, root)


@_hostile(2)
@given(data=st.data())
def test_index_lies_are_rejected(data, bases, models, root):
    """Index types, traversal, absolute paths, devices, FIFOs, symlinks out, missing/phantom/duplicate [2, 3, 10]."""
    case = data.draw(hostile_cases(bases["sharded"], ("index",)), label="case")
    _check_case(bases["sharded"], case, models, root)


@_hostile(1)
@given(data=st.data())
def test_unusable_directories_are_rejected(data, bases, models, root):
    """No shard, a special file named like one, duplicates between index-less shards [class 2, 3]."""
    base = bases[data.draw(st.sampled_from(["single", "sharded"]), label="base")]
    case = data.draw(hostile_cases(base, ("directory",)), label="case")
    _check_case(base, case, models, root)


@_hostile(1)
@given(data=st.data())
def test_hostile_configs_are_rejected_before_building(data, bases, root):
    """``config.json`` lies: types, sizes, headers disagreeing, huge allocations, special files [class 11]."""
    base = bases[data.draw(st.sampled_from(["single", "sharded"]), label="base")]
    config = json.loads(base.files["config.json"])
    case = data.draw(config_cases(config), label="case")
    work = Path(tempfile.mkdtemp(dir=root))
    try:
        directory = write_case(base, case, work)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        with _watched(directory) as outside, _deadline(CASE_SECONDS):
            exc = _raised(lambda: inspect_checkpoint(directory))
            json_level = _raised(lambda: read_config(directory))
        elapsed = time.perf_counter() - start
        STATS["cases"] += 1
        STATS["family config"] += 1
        EXCEPTIONS[type(exc).__name__] += 1
        if not isinstance(exc, CheckpointError):
            STATS["undocumented exceptions"] += 1
        if outside:
            STATS["reads outside"] += 1
        assert not outside, f"{case.description}: opened outside {directory}: {outside}"
        assert isinstance(exc, CheckpointError), f"{case.description}: inspect_checkpoint raised {exc!r}"
        assert "config.json" in str(exc), f"{case.description}: {exc}"
        if json_level is not None:
            assert isinstance(json_level, CheckpointFormatError) and "config.json" in str(json_level), json_level
        else:  # a well-formed object with wrong values: spec_from_hf_config itself refuses it (or inspect did)
            spec_exc = _raised(lambda: spec_from_hf_config(read_config(directory), max_parameters=10**9))
            if spec_exc is not None:
                assert isinstance(spec_exc, (ConfigError, ValueError)), repr(spec_exc)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
        assert elapsed < CASE_SECONDS and grew < CASE_RSS_BYTES, (case.description, elapsed, grew)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ examples
def test_the_bases_are_valid(bases, models, root):
    """The unmodified checkpoints pass every check the hostile cases fail."""
    for key, base in bases.items():
        work = Path(tempfile.mkdtemp(dir=root))
        directory = write_case(base, HostileCase("none", "unchanged", ()), work)
        with _watched(directory) as outside:
            tensors = dict(iter_checkpoint(directory))
            info = inspect_checkpoint(directory)
        assert not outside, outside
        assert len(tensors) == len(dict(_layout(None).tensors())), key
        assert info.kv_scales == ((0.5, 0.25), (0.5, 0.25))
        _same_as_safetensors(directory)


def _hf_snapshot(base: BaseCheckpoint, root: Path, repo: str) -> Path:
    """A Hugging Face cache layout: ``<repo>/snapshots/<rev>/<file>`` symlinks to ``<repo>/blobs/<hash>``."""
    blobs, snapshot_dir = root / repo / "blobs", root / repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot_dir.mkdir(parents=True)
    for number, (name, data) in enumerate(base.files.items()):
        (blobs / f"blob{number}").write_bytes(data)
        (snapshot_dir / name).symlink_to(f"../../blobs/blob{number}")
    return snapshot_dir


def test_hugging_face_snapshot_symlinks_stay_readable(bases, root):
    """A HF cache snapshot (files are symlinks into the repository's ``blobs/``) reads, and only from there."""
    for key, base in bases.items():
        directory = _hf_snapshot(base, Path(tempfile.mkdtemp(dir=root)), "models--org--name")
        with _watched(directory.parent.parent) as outside:
            tensors = dict(iter_checkpoint(directory))
            config = read_config(directory)
            model = api.build(SPEC)
            api.first_load(model, directory)
        assert not outside, outside
        assert config == json.loads(base.files["config.json"]) and tensors, key


def test_hugging_face_snapshot_links_elsewhere_are_rejected(bases, root):
    """In a snapshot, a link to another repository's blobs, or to the repository root, is outside."""
    base = bases["sharded"]
    top = Path(tempfile.mkdtemp(dir=root))
    directory = _hf_snapshot(base, top, "models--org--name")
    other = _hf_snapshot(base, top, "models--evil--other")
    shard = base.shards[0]
    for target in (other.parent.parent / "blobs" / "blob1", directory.parent.parent / "refs"):
        (directory / shard).unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(base.files[shard])
        (directory / shard).symlink_to(target)
        with _watched(directory.parent.parent) as outside, pytest.raises(CheckpointFormatError, match="outside"):
            list(iter_checkpoint(directory))
        assert not outside, outside


def test_a_fifo_named_like_a_shard_is_never_opened(bases, root):
    """The FIFO is rejected from its ``stat``: the audit hook sees no open of it, and nothing blocks."""
    base = bases["single"]
    work = Path(tempfile.mkdtemp(dir=root))
    directory = write_case(base, HostileCase("directory", "fifo", ("model.safetensors",),
                                             specials=(("fifo", "model.safetensors", ""),)), work)
    with _watched(Path("/nonexistent")) as opened, _deadline(CASE_SECONDS):
        with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*a FIFO, not a regular file"):
            list(iter_checkpoint(directory))
    assert not any(path.endswith("model.safetensors") for path in opened), opened


def test_messages_name_file_tensor_and_reason(bases, root):
    """A few exact messages: the file, the tensor and the reason."""
    base = bases["sharded"]
    header, data = base.header(base.shards[0])
    tensor = sorted(n for n in header if n != "__metadata__")[0]
    header[tensor]["dtype"] = "F64"
    text = json.dumps(header).encode()
    raw = len(text).to_bytes(8, "little") + text + data
    directory = write_case(base, HostileCase("header", "dtype", (), {base.shards[0]: raw}),
                           Path(tempfile.mkdtemp(dir=root)))
    with pytest.raises(CheckpointFormatError) as info:
        iter_checkpoint(directory)
    message = str(info.value)
    assert base.shards[0] in message and repr(tensor) in message and "needs" in message, message
    weight_map = dict(base.index["weight_map"])
    weight_map[tensor] = f"../{SIBLING}/{base.shards[0]}"
    directory = write_case(base, HostileCase("index", "traversal", (), {
        "model.safetensors.index.json": json.dumps({"weight_map": weight_map}).encode()}),
        Path(tempfile.mkdtemp(dir=root)))
    with pytest.raises(CheckpointFormatError, match=r"index\.json: shard of tensor .* is not a plain file name"):
        iter_checkpoint(directory)
    empty = Path(tempfile.mkdtemp(dir=root))
    with pytest.raises(CheckpointFormatError, match=rf"{empty}: holds no safetensors file"):
        shard_files(empty)
    assert OUTSIDE_FILE  # the strategies' outside file exists next to every case directory


def test_empty_tokenizer_json_is_a_checkpoint_error(tmp_path):
    """``tokenizer.json`` of ``{}`` is a ``CheckpointError``, not a ``KeyError`` [class 11]."""
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no usable tokenizer"):
        load_tokenizer(tmp_path)


def test_config_problems_are_listed_together(bases, root):
    """Every problem of a config in one message, before anything is built."""
    base = bases["single"]
    config = json.loads(base.files["config.json"])
    config.update(num_hidden_layers="2", tie_word_embeddings="false", vocab_size=0, hidden_size=-16)
    directory = write_case(base, HostileCase("config", "many", (), {"config.json": json.dumps(config).encode()}),
                           Path(tempfile.mkdtemp(dir=root)))
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(directory)
    message = str(info.value)
    for part in ("num_hidden_layers='2'", "tie_word_embeddings='false'", "vocab_size=0", "hidden_size=-16"):
        assert part in message, message
    with pytest.raises(ConfigError, match="num_hidden_layers='2'"):
        spec_from_hf_config(config)
    config = json.loads(base.files["config.json"])
    config.update(num_hidden_layers=10**8)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="num_hidden_layers=100000000, over"):
        spec_from_hf_config(config)
    assert time.perf_counter() - start < 1.0
