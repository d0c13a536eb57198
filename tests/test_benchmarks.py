"""The speed benchmarks run end to end at a small size and report what they promise."""

from __future__ import annotations

import io
import json
import os

import onnxruntime
import pytest
from PIL import Image

from benchmarks import cluster, gpu, regions, scale, throughput, unsure_share
from lookalike.index import list_index
from lookalike.index.list_index import EXACT_VECTORS_MAX
from tests.conftest import corpus_photos
from tests.processes import descendants


@pytest.fixture
def corpus() -> None:
    """The benchmarks below time real photos: skip, saying where they were looked for, without them."""
    corpus_photos()


@pytest.mark.slow
def test_scale_benchmark_reports_an_ivf_list_with_full_recall_and_a_matchable_new_entry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = EXACT_VECTORS_MAX + 5_000
    monkeypatch.setattr(list_index, "EXACT_PDQ_MAX", 10_000)  # a binary IVF and hash tables on the PDQ side too
    assert scale.main(["--entries", str(entries), "--queries", "60"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["layout"]["vector_cells"] > 0, "past the exact limit the list is an IVF"
    assert report["recall_of_exact_top1_in_top10"] >= 0.95
    assert report["similarity_error_max"] < 2e-3, "re-ranked from 8-bit codes, close to exact"
    assert report["exact_top1_is_the_planted_entry"] == 1.0
    assert report["new_entry_matchable_on_next_search"] is True
    assert report["startup"]["entries"] == entries + 1 - 20  # one added, twenty removed, after a restart
    assert report["embedding_search"]["p50_ms"] > 0
    assert set(report["check_searches_by_views"]) == {"3", "10"}, "a composite's and a collage's searches"
    assert report["picture_check_searches"]["p50_ms"] >= report["embedding_search"]["p50_ms"]
    assert 0 < report["pdq_search_own_code"]["p50_ms"] <= report["picture_check_searches"]["p50_ms"]
    assert report["layout"]["pdq_cells"] > 0 and report["pdq_tables_s"] > 0
    assert set(report["pdq_recall_by_distance"].values()) == {1.0}, "the hash tables miss nothing to 48 bits here"
    assert report["binary_ivf_alone"]["pdq_search_own_code"]["p50_ms"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("corpus")
def test_throughput_benchmark_reports_the_models_own_rate_and_the_ratio_to_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = ["--entries", "200", "--seconds", "1", "--clients", "2", "--bulk-images", "4"]
    assert throughput.main(arguments) == 0
    output = capsys.readouterr().out
    report = json.loads(output.strip().splitlines()[-1])
    rate = report["model_images_per_s"]
    assert rate["before"] > 0 and rate["after"] > 0 and rate["mean"] == (rate["before"] + rate["after"]) / 2
    (load,) = report["loads"]
    assert load["ratio_to_model"] == pytest.approx(load["checks_per_s"] / rate["mean"])
    assert load["ratio_to_floor"] == pytest.approx(load["checks_per_s"] / report["floor_checks_per_s"]["mean"])
    assert "ratio_to_model" in output.splitlines()[2], "the table shows the ratio beside the floor's"
    model_cpu = report["model_cpu_ms_per_image"]
    assert model_cpu["before"] > 0 and model_cpu["after"] > 0
    assert load["cpu_ms_per_check"] > model_cpu["mean"] / 4, "the server and its workers' CPU, not the clients'"
    assert 0 < load["server_cpu_ms_per_check"] < load["cpu_ms_per_check"], "the workers' is the rest"
    assert load["cpu_ratio_to_model"] == pytest.approx(model_cpu["mean"] / load["cpu_ms_per_check"])


def test_throughput_and_stages_can_time_camera_sized_jpegs() -> None:
    """`--long-side 1600`: the issue's phone-sized uploads, made from any photo (here a drawn one)."""
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((400, 300)).save(buffer, "JPEG")
    (resized,) = throughput.at_long_side([buffer.getvalue()], 1600)
    with Image.open(io.BytesIO(resized)) as image:
        assert image.format == "JPEG" and image.size == (1600, 1200)


@pytest.mark.slow
@pytest.mark.usefixtures("corpus")
def test_gpu_benchmark_says_no_gpu_was_found_and_runs_the_batched_path_on_the_cpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: the benchmark would measure a GPU")
    assert gpu.main(["--entries", "200", "--seconds", "1", "--batches", "1,4"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("NO GPU FOUND ("), "said first, before any figure"
    report = json.loads(output.strip().splitlines()[-1])
    assert report["gpu_found"] is False and "CUDA" in report["no_gpu_reason"] and report["device"] == "cpu"
    paths = [(row["path"], row["batch"]) for row in report["checks"]]
    assert paths == [("cpu (workers run the model)", 1), ("cpu, batched", 1), ("cpu, batched", 4)]
    for row in report["checks"]:
        assert row["checks_per_s"] > 0 and row["errors"] == 0 and row["p99_ms"] >= row["p50_ms"]
        assert row["mean_batch"] >= 1
    assert [row["batch"] for row in report["model_alone"]] == [1, 4]
    assert report["model_alone"][1]["mean_batch"] > 1, "pictures of one size, eight callers: shared inferences"
    assert report["lowest_cosine_batched_to_cpu"] > 0.9999


@pytest.mark.slow
@pytest.mark.usefixtures("corpus")
def test_cluster_benchmark_reports_lag_apply_rates_a_new_nodes_catch_up_and_checks_while_replicating(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = ["--entries", "1000", "--tail", "20", "--batch", "20", "--bulk-changes", "5"]
    running_before = set(descendants(os.getpid()))  # e.g. multiprocessing's resource tracker, from earlier tests
    assert cluster.main([*arguments, "--seconds", "1", "--clients", "2", "--append-seconds", "0.5"]) == 0
    output = capsys.readouterr().out
    report = json.loads(output.strip().splitlines()[-1])
    assert set(descendants(os.getpid())) <= running_before, "every nats-server and node process ended"
    (run,) = report["sizes"]
    assert run["entries"] == 1000 and run["populate"]["entries_per_s"] > 0
    new_node = run["new_node"]
    assert new_node["snapshots_kept"] == 1 and new_node["snapshot_sequence"] == 3, "the list, then two imports of 500"
    assert new_node["snapshot_store_bytes"] > 1000 * 1024, "a float16 embedding alone is 1 KiB an entry"
    assert new_node["tail_changes"] == 20 and new_node["entries_on_new_node"] == 1000 + 20
    parts = [new_node["restore_s"], new_node["index_build_s"], new_node["tail_s"]]
    assert min(parts) > 0 and new_node["total_s"] == pytest.approx(sum(parts))
    assert run["apply_single_adds"]["changes"] == 20, "one change a single add"
    assert run["apply_imports"]["changes"] == 5 and run["apply_imports"]["entries"] == 100
    for applied in (run["apply_single_adds"], run["apply_imports"]):
        assert applied["changes_per_s"] == pytest.approx(applied["changes"] / applied["seconds"])
        assert applied["cpu_ms_per_change"] == pytest.approx(1000 * applied["cpu_s"] / applied["changes"])
    lag = run["lag"]
    assert lag["batches"] > 0 and lag["entries"] == 20 * lag["batches"] and lag["entries_per_s_acknowledged"] > 0
    assert 0 < lag["lag_floor_ms"] and 0 <= lag["lag_s"]["p50"] <= lag["lag_s"]["p99"] <= lag["lag_s"]["max"]
    checks = run["checks"]
    assert [arm["arm"] for arm in checks["arms"]] == ["alone", "replicating"] * 2
    assert all(arm["errors"] == 0 and arm["checks_per_s"] > 0 for arm in checks["arms"])
    assert checks["ratio"] == pytest.approx(checks["replicating_checks_per_s"] / checks["alone_checks_per_s"])
    assert checks["ratio"] > 0 and checks["alone_cpu_ms_per_check"] > 0
    assert all(arm["entries_written_per_s"] > 0 for arm in checks["arms"] if arm["arm"] == "replicating")
    assert run["stream_appends_per_s"]["1"] > 0 and run["stream_appends_per_s"]["4"] > 0
    assert "new_node_s" in output.splitlines()[0], "the table comes first, the JSON last"


@pytest.mark.usefixtures("corpus")
def test_regions_benchmark_times_both_arms_and_finds_the_same_regions_as_the_committed_finders(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert regions.main(["--against", "HEAD", "--max-photos", "4", "--passes", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(row["arm"], row["pictures"]) for row in report["rows"]} == {("HEAD", "plain"), ("today", "plain")}
    assert all(row["mean ms"] > 0 for row in report["rows"])
    assert report["differing"] == [], "the committed finders and the working tree's are the same code"


@pytest.mark.usefixtures("corpus")
def test_unsure_share_benchmark_reports_more_entries_reaching_the_keypoint_floor_as_the_list_grows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert unsure_share.main(["--max-photos", "40", "--tiles", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    whole, tiled = report["rows"]
    assert tiled["entries"] == 5 * whole["entries"], "each listed photo, then its four tiles"
    floor = "share >= 0.30"
    assert 0 <= whole[floor] <= tiled[floor] <= tiled["share >= 0.25"] <= 1
    assert whole["median best cosine"] <= tiled["median best cosine"]
