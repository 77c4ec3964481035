"""Bundle validation, provider choice and the engine's two calls on the tiny bundle."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.bundle import BundleError, load_bundle
from service.engine import (
    CPU,
    CUDA,
    DecoderState,
    Engine,
    SourceRows,
    auto_threads,
    choose_providers,
    length_groups,
)

BOS = 2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def engine(bundle):
    return Engine(bundle, device="cpu", threads=1)


@pytest.fixture
def broken(tiny_bundle, tmp_path):
    """A copy of the tiny bundle to break, and a function to edit its manifest."""
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)

    def edit(change):
        manifest = json.loads((folder / "model.json").read_text())
        change(manifest)
        (folder / "model.json").write_text(json.dumps(manifest))

    return folder, edit


# Bundle validation.


def test_a_valid_bundle_loads_with_its_manifest(bundle):
    assert bundle.manifest["id"] == "en-es"
    assert (bundle.bos_id, bundle.eos_id) == (2, 3)
    assert bundle.max_target_len(10) == 25 and bundle.max_target_len(1000) == 256


def test_a_missing_graph_is_named(broken):
    folder, _ = broken
    (folder / "decoder_step.onnx").unlink()
    with pytest.raises(BundleError, match=r"bundle file missing: decoder_step\.onnx \(files\.decoder_step"):
        load_bundle(folder)


def test_a_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no model.json"):
        load_bundle(tmp_path)


def test_a_vocabulary_that_disagrees_with_the_tokenizer_names_the_field(broken):
    folder, edit = broken
    edit(lambda m: m["sizes"].update(tgt_vocab=m["sizes"]["tgt_vocab"] + 1))
    with pytest.raises(
        BundleError, match=r"tgt_tokenizer\.json: vocabulary of \d+ tokens but model.json sizes.tgt_vocab"
    ):
        load_bundle(folder)


def test_a_missing_manifest_field_is_named(broken):
    folder, edit = broken
    edit(lambda m: m.pop("special_tokens"))
    with pytest.raises(BundleError, match="missing field 'special_tokens'"):
        load_bundle(folder)


def test_graph_names_the_service_does_not_know_are_refused(broken):
    folder, edit = broken
    edit(lambda m: m["graphs"]["decoder_step"].update(inputs=["tokens", "hidden", "memory", "keys", "src_mask"]))
    with pytest.raises(BundleError, match=r"graphs.decoder_step.inputs is \['tokens'"):
        load_bundle(folder)


def test_a_graph_that_disagrees_with_the_manifest_sizes_is_refused(broken):
    folder, edit = broken
    edit(lambda m: m["sizes"].update(dec_hidden=m["sizes"]["dec_hidden"] * 2))
    with pytest.raises(
        BundleError, match=r"encoder.onnx: hidden has size \d+ on axis 2 but model.json sizes.dec_hidden"
    ):
        Engine(load_bundle(folder), device="cpu", threads=1)


def test_a_graph_swapped_for_another_is_refused(broken):
    folder, _ = broken
    shutil.copy(folder / "encoder.onnx", folder / "decoder_step.onnx")
    with pytest.raises(BundleError, match=r"decoder_step.onnx: graph inputs are \['src_ids', 'src_lengths'\]"):
        Engine(load_bundle(folder), device="cpu", threads=1)


# Provider choice.


def test_cuda_comes_first_when_asked_for_and_available():
    assert choose_providers("auto", [CUDA, CPU], 1) == [(CUDA, {"device_id": 1}), CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [(CUDA, {"device_id": 0}), CPU]


def test_cpu_is_used_when_asked_for_or_when_cuda_is_missing(caplog):
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    with caplog.at_level(logging.WARNING):
        assert choose_providers("cuda", ["AzureExecutionProvider", CPU]) == [CPU]
    assert "CUDA was asked for" in caplog.text


class FakeCudaSession:
    """Records the providers asked for and runs on CPU; reports the providers asked for, or
    `reports` when set (a CUDA provider that failed to load)."""

    asked: list = []
    reports: list | None = None
    real = ort.InferenceSession

    def __init__(self, path, options, providers):
        FakeCudaSession.asked.append(providers)
        self.providers = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.session = FakeCudaSession.real(path, options, providers=[CPU])

    def get_providers(self):
        return list(self.reports or self.providers)

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    FakeCudaSession.asked = []
    monkeypatch.setattr(FakeCudaSession, "reports", None)
    return FakeCudaSession


def test_the_engine_runs_on_cuda_with_io_binding_when_onnxruntime_offers_it(bundle, fake_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="service.engine"):
        engine = Engine(bundle, device="auto", threads=1)
    assert fake_cuda.asked == [[(CUDA, {"device_id": 0}), CPU]] * 2
    assert (engine.device, engine.io_binding) == ("cuda", True)
    assert "CUDAExecutionProvider (device 0)" in caplog.text and "IO binding on" in caplog.text


def test_the_engine_falls_back_to_cpu_when_cuda_fails_to_load(bundle, fake_cuda, caplog):
    fake_cuda.reports = [CPU]
    with caplog.at_level(logging.INFO, logger="service.engine"):
        engine = Engine(bundle, device="cuda", threads=1)
    assert (engine.device, engine.io_binding) == ("cpu", False)
    assert "CPUExecutionProvider, intra-op threads 1" in caplog.text


def test_the_engine_stays_on_cpu_when_told_to(bundle, fake_cuda):
    engine = Engine(bundle, device="cpu", threads=1)
    assert fake_cuda.asked == [[CPU]] * 2 and engine.device == "cpu"


# The two calls.


def test_encoding_together_equals_encoding_alone(engine):
    batch = [[5, 6, 7, 8, 9, 3], [10, 3], [11, 12, 3]]
    alone = [engine.encode([ids])[0] for ids in batch]
    # grouped by length, and in one run padded to the longest
    for together in (engine.encode(batch), engine._encode_run(batch)):
        for ids, src, one in zip(batch, together, alone, strict=True):
            assert src.length == len(ids)
            np.testing.assert_allclose(src.memory, one.memory, atol=1e-6)
            np.testing.assert_allclose(src.keys, one.keys, atol=1e-6)
            np.testing.assert_allclose(src.hidden, one.hidden, atol=1e-6)


def test_sources_are_encoded_in_runs_of_like_length(engine, monkeypatch):
    runs, real = [], engine._encode_run
    monkeypatch.setattr(engine, "_encode_run", lambda batch: runs.append([len(s) for s in batch]) or real(batch))
    lengths = [30, 4, 5, 31, 4, 29, 60]
    found = engine.encode([[7] * (n - 1) + [3] for n in lengths])
    assert runs == [[4, 4, 5], [29, 30, 31], [60]]
    assert [s.length for s in found] == lengths  # in the order given


def test_length_groups_cover_every_source_once_within_their_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 120, size=int(rng.integers(0, 90))).tolist()
        groups = length_groups(lengths, most=16, padding=1.25)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            ids = [lengths[i] for i in g]
            assert len(g) <= 16 and len(g) * max(ids) <= 1.25 * sum(ids)
    assert length_groups([9] * 40, most=16) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert length_groups([]) == []


def test_attention_rows_sum_to_one_and_are_zero_on_padding(engine):
    sources = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3]])
    state = DecoderState(np.array([BOS, BOS]), sources, np.array([-1, -1]))
    out = engine.decode_step(state)
    assert out.attention.shape == (2, 8)  # the source dimension is padded to a multiple of 8
    np.testing.assert_allclose(out.attention.sum(1), 1.0, atol=1e-6)
    assert (out.attention[0, 6:] == 0).all() and (out.attention[1, 2:] == 0).all()
    assert out.topk_ids.shape == (2, engine.topk)
    assert (np.diff(out.topk_log_probs, axis=1) <= 0).all()


def run_steps(engine, sources):
    """A fixed script of steps: rows reorder (beam), a row is freed, a fresh one joins."""
    script = [
        (np.array([-1, -1]), [0, 1]),
        (np.array([1, 0]), [1, 0]),
        (np.array([0, 0, 1]), [1, 1, 0]),
        (np.array([-1, 1, -1]), [None, 1, 2]),
        (np.array([0, 1, 2]), [None, 1, 2]),
        (np.array([-1, 1, 2]), [0, 1, 2]),
    ]
    outs, previous = [], None
    for origin, which in script:
        rows = [None if i is None else sources[i] for i in which]
        tokens = np.array([BOS] * len(which)) if previous is None else previous.topk_ids[np.maximum(origin, 0), 0]
        tokens = np.where(origin < 0, BOS, tokens)
        previous = engine.decode_step(DecoderState(tokens, rows, origin, previous))
        outs.append(previous)
    return outs


def test_the_io_binding_path_gives_the_same_steps_as_plain_runs(bundle, engine):
    bound = Engine(bundle, device="cpu", threads=1, io_binding=True)
    sources = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3], [11, 12, 13, 3]])
    for plain, io in zip(run_steps(engine, sources), run_steps(bound, sources), strict=True):
        assert isinstance(io.hidden, ort.OrtValue)
        np.testing.assert_array_equal(plain.topk_ids, io.topk_ids)
        np.testing.assert_allclose(plain.attention, io.attention, atol=1e-6)
        np.testing.assert_allclose(plain.hidden, io.hidden.numpy(), atol=1e-6)


def test_a_row_reads_the_same_whatever_rows_share_its_step(engine):
    sources = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3], [11, 12, 13, 3]])
    steps = run_steps(engine, sources)
    alone = engine.decode_step(DecoderState(np.array([BOS]), [sources[2]], np.array([-1])))
    # step 4's last row is source 2 fresh, padded among a free row and a continuing one
    np.testing.assert_allclose(steps[3].attention[2, :4], alone.attention[0, :4], atol=1e-6)
    np.testing.assert_allclose(steps[3].topk_log_probs[2], alone.topk_log_probs[0], atol=1e-5)
    # step 5: every row continues itself, so the hidden state and the buffers pass through
    assert steps[4].source_rows is steps[3].source_rows
    second = engine.decode_step(DecoderState(alone.topk_ids[:, 0], [sources[2]], np.array([0]), alone))
    np.testing.assert_allclose(steps[4].attention[2, :4], second.attention[0, :4], atol=1e-6)


def test_a_step_gives_as_many_candidates_as_asked_within_the_graphs_widest(engine):
    sources = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3]])
    fresh = (np.array([BOS, BOS]), sources, np.array([-1, -1]))
    widest = engine.decode_step(DecoderState(*fresh))
    assert widest.topk_ids.shape == (2, engine.topk)
    for asked, given in ((1, 1), (10, 10), (engine.topk + 5, engine.topk)):
        out = engine.decode_step(DecoderState(*fresh, candidates=asked))
        assert out.topk_ids.shape == (2, given)
        np.testing.assert_array_equal(out.topk_ids, widest.topk_ids[:, :given])
        np.testing.assert_array_equal(out.topk_log_probs, widest.topk_log_probs[:, :given])


def fixed_width_copy(folder: Path) -> None:
    """Turn a bundle into one exported before the "k" input: top-k width a constant of the
    graph (sizes.topk), the manifest without "k", the version digest made again."""
    import onnx
    from onnx import numpy_helper

    from service.bundle import FILE_KEYS, file_digest

    model = onnx.load(folder / "decoder_step.onnx")
    manifest = json.loads((folder / "model.json").read_text())
    for node in model.graph.node:  # the top-k nodes read a constant width instead
        node.input[:] = ["fixed_k" if name == "k" else name for name in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array([manifest["sizes"]["topk"]]), "fixed_k"))
    kept = [i for i in model.graph.input if i.name != "k"]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for out in model.graph.output:
        if out.name.startswith("topk_"):
            out.type.tensor_type.shape.dim[1].dim_value = manifest["sizes"]["topk"]
    onnx.checker.check_model(model)
    onnx.save(model, folder / "decoder_step.onnx")
    manifest["graphs"]["decoder_step"]["inputs"].remove("k")
    manifest["version"] = file_digest(folder, [manifest["files"][key] for key in FILE_KEYS])
    (folder / "model.json").write_text(json.dumps(manifest))


def test_a_bundle_exported_before_the_width_input_is_still_served(broken, engine):
    folder, _ = broken
    fixed_width_copy(folder)
    old = Engine(load_bundle(folder), device="cpu", threads=1)
    assert not old.topk_input and engine.topk_input
    sources = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3], [11, 12, 13, 3]])
    for new, before in zip(run_steps(engine, sources), run_steps(old, sources), strict=True):
        assert before.topk_ids.shape[1] == engine.topk
        np.testing.assert_array_equal(new.topk_ids, before.topk_ids)
        np.testing.assert_allclose(new.attention, before.attention, atol=1e-6)
    greedy = old.decode_step(DecoderState(np.array([BOS]), sources[:1], np.array([-1]), candidates=1))
    assert greedy.topk_ids.shape == (1, engine.topk)  # its graph always gives its widest


def test_source_rows_are_rewritten_only_when_a_row_changes_hands(engine):
    a, b, c = engine.encode([[5, 6, 7, 8, 9, 3], [10, 3], [11, 12, 13, 3]])
    rows = SourceRows(4, 8, a.memory.shape[1], a.keys.shape[1])
    assert rows.write([a, b, None]) is True
    assert rows.write([a, b, None]) is False
    assert rows.write([a, None, c]) is True and rows.content[:3] == [a, b, c]
    assert rows.write([c, None, c]) is True
    np.testing.assert_array_equal(rows.memory[0, :4], c.memory)
    assert (rows.memory[0, 4:] == 0).all() and rows.mask[0].tolist() == [True] * 4 + [False] * 4


def run_bench(bundle: Path, *args: str) -> str:
    """bench_engine.py --dry-run on the tiny bundle and test split, one thread; its stdout."""
    test = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "test.tsv"
    common = ["--dry-run", "--bundle", str(bundle), "--test", str(test), "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_engine.py"), *common, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_engine_benchmark_dry_run_writes_its_table(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    stdout = run_bench(tiny_bundle, "--int8", "--json", str(out))
    assert "| continuous, all at once | 1 |" in stdout
    report = json.loads(out.read_text())
    assert {r["config"] for r in report["rows"]} >= {"onnxruntime batch 1", "request-level batching"}
    assert report["decoder_step"]["gflops"] > 0 and report["matmul_gflops"] > 0
    assert [s["beam"] for s in report["continuous_time_split"]] == [1, 5]
    split = report["continuous_time_split"][0]
    assert split["encode_share"] > 0 and split["decode_step_share"] > 0 and split["steps"] > 0
    assert report["decoder_step_profile"][0]["ms"] > 0 and report["int8_decoder_step_profile"]
    assert "| beam 1 |" in stdout and "onnxruntime profile" in stdout
    replay = report["step_live_vs_replayed"]
    assert replay["live_median_ms"] > 0 and replay["replayed_median_ms"] > 0 and replay["steps"] > 0
    configs = {(r["config"], r["beam"]) for r in report["rows"]}
    assert {("continuous, encoded ahead", 5), ("onnxruntime batch 1, spinning", 1)} <= configs
    assert report["decoder_step"]["candidates"] == 1 and report["decoder_step_beam"]["candidates"] == 10
    ceiling = report["continuous_ceiling"]
    assert 0 < ceiling["ideal_ms_per_sentence"] and ceiling["ceiling"] > 0 and "Ceiling of continuous" in stdout
    assert [e["encoding"] for e in report["encoder"]["rates"]][:2] == [
        "alone",
        "16 as they come, one run padded to the longest",
    ]
    assert all(e["ms_per_sentence"] > 0 for e in report["encoder"]["rates"]) and "| encoding |" in stdout


def test_the_engine_benchmark_can_time_the_bare_step_alone(tiny_bundle):
    stdout = run_bench(tiny_bundle, "--steps-only", "1,4")
    assert "| 1 |" in stdout and "| 4 |" in stdout and "share of matmul" in stdout


def test_the_engine_benchmark_times_two_bundles_steps_side_by_side(tiny_bundle, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    stdout = run_bench(tiny_bundle, "--steps-only", "4", "--against", str(other))
    assert f"| {tiny_bundle} | 4 | 1 |" in stdout and f"| {other} | 4 | 1 |" in stdout


def test_idle_intra_op_threads_sleep_unless_spinning_is_asked_for(bundle):
    for spinning, entry in ((False, "0"), (True, "1")):
        engine = Engine(bundle, device="cpu", threads=2, spinning=spinning)
        for session in (engine.encoder, engine.decoder):
            options = session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry


def test_the_encoder_gets_its_own_thread_count_or_the_decoders(bundle):
    def threads(engine):
        return [s.get_session_options().intra_op_num_threads for s in (engine.encoder, engine.decoder)]

    assert threads(Engine(bundle, device="cpu", threads=2, encoder_threads=1)) == [1, 2]
    assert threads(Engine(bundle, device="cpu", threads=2)) == [2, 2]


def test_auto_threads_leave_one_core_to_the_event_loop():
    assert [auto_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
