"""alignatt_eval.runners.sweep: grid expansion, then a real local Ray with 2 workers on tiny models, checked against alignatt_eval.runners.run_dev."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from alignatt_eval.runners import run_dev, sweep
from test_eval_runner import FAST, predictions, require_espeak, write_two_talk_dev_set

ray = pytest.importorskip("ray", reason="the sweep extra is not installed: pip install -e .[sweep]")

from agent_fixtures import save_tiny_checkpoints  # noqa: E402
from alignatt_eval.runners.synth_talks import synth_dev_set  # noqa: E402

TALKS = ["talkA", "talkB"]
# Two configs that share one backbone: wait-k and AlignAtt at the high preset.
RUNS = [{"preset": "high", "policy": "wait-k", "wait_k": 1}, {"preset": "high", "policy": "alignatt"}]


def write_grid(path, data, runs=RUNS):
    path.write_text(json.dumps({"data": str(data), "lang": "de", "comet_model": "", "runs": runs}))
    return path


def test_grid_expands_every_combination_into_run_dev_configs(tmp_path):
    grid = {"data": "d", "n_talks": 2, "agent": {"asr_backend": "whisper"},
            "runs": [{"preset": ["low", "high"], "policy": "alignatt", "agent": {"source_margin_ms": [0, 500]}},
                     {"policy": "wait-k", "wait_k": [2, 4], "agent": {"source_require_stable": False}},
                     {"policy": "alignatt", "name": "{lang}.published", "agent": {"gate": "published"}},
                     {"step_ms": [500, 2000], "policy": "local-agreement"}]}
    configs = sweep.expand_grid(grid, tmp_path)
    assert [c.name for c in configs] == [
        "de.low.alignatt.source-margin-ms=0", "de.low.alignatt.source-margin-ms=500",
        "de.high.alignatt.source-margin-ms=0", "de.high.alignatt.source-margin-ms=500",
        "de.low.wait-k2.source-require-stable=False", "de.low.wait-k4.source-require-stable=False", "de.published",
        "de.500ms.local-agreement", "de.2000ms.local-agreement"]
    args, agent = run_dev.parse_args(list(configs[3].argv))
    assert (args.preset, args.policy, args.n_talks, args.out, args.name) == ("high", "alignatt", 2, str(tmp_path),
                                                                            configs[3].name)
    assert agent == ["--asr-backend", "whisper", "--source-margin-ms", "500"]
    assert run_dev.parse_args(list(configs[4].argv))[1][-1] == "--no-source-require-stable"

    with pytest.raises(ValueError, match="source_margin"):  # a typo in an agent option fails before any job
        sweep.expand_grid({"runs": [{"agent": {"source_margin": 1}}]}, tmp_path)
    with pytest.raises(ValueError, match="several runs are named"):
        sweep.expand_grid({"runs": [{"name": "x", "preset": ["low", "high"]}]}, tmp_path)
    with pytest.raises(ValueError, match="unknown run key"):
        sweep.expand_grid({"runs": [{"chunk": 500}]}, tmp_path)
    with pytest.raises(SystemExit):  # the runner's own check: flags it sets itself
        sweep.expand_grid({"runs": [{"agent": {"target_lang": "it"}}]}, tmp_path)


def test_asr_cache_defaults_to_the_output_folder(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", tmp_path)
    _, configs = sweep.plan([str(grid), "--out", str(tmp_path / "out"), "--", "--asr-backend", "whisper"])
    assert configs[0].argv[-2:] == ("--asr-cache-dir", str(tmp_path / "out" / "asr_cache"))
    _, configs = sweep.plan([str(grid), "--out", str(tmp_path / "out"), "--no-asr-cache"])
    assert "--asr-cache-dir" not in configs[0].argv


def test_a_job_does_not_transcribe_a_talk_that_a_running_job_is_recording(tmp_path):
    configs = sweep.expand_grid({"talks": TALKS, "runs": [{"preset": "low", "policy": "wait-k", "wait_k": [1, 2]},
                                                          {"step_ms": 1500, "policy": "alignatt"}]}, tmp_path)
    jobs = [sweep.Job(config, talk) for config in configs for talk in TALKS]
    job_sweep = sweep.Sweep(jobs, n_workers=2)
    first = job_sweep.next_job()
    job_sweep.running["ref"] = (None, first, 0.0)
    # k=2 on talkA at 850 ms would transcribe it again: talkB (not being recorded) goes first.
    assert (first.talk, job_sweep.next_job().talk) == ("talkA", "talkB")
    job_sweep.running["ref2"] = (None, jobs[1], 0.0)
    # Both 850 ms talks are being recorded: the 1500 ms ones (another step, other windows) go next.
    assert job_sweep.next_job().asr_key == ("talkA", 1500.0)
    job_sweep.asr_recorded.add(first.asr_key)  # talkA's ASR is cached once its first job finished
    assert (job_sweep.next_job().config.name, job_sweep.jobs[0].talk) == ("de.low.wait-k2", "talkB")
    job_sweep.asr_recorded.clear()  # all blocked: a worker still gets a job rather than idle
    job_sweep.running["ref3"] = (None, jobs[-1], 0.0)
    assert (job_sweep.next_job().config.name, len(job_sweep.jobs)) == ("de.low.wait-k2", 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two talks, tiny checkpoints, and the run_dev results of both configs (one simuleval process per config,
    live ASR)."""
    require_espeak()
    root = tmp_path_factory.mktemp("sweep")
    data = synth_dev_set(root / "synth", TALKS, write_two_talk_dev_set(root / "text")).root
    checkpoints = save_tiny_checkpoints(root / "models")
    flags = [*checkpoints.agent_flags(), *FAST]
    reference = {}
    for run in RUNS:
        row = run_dev.main(["--data", str(data), "--lang", "de", "--preset", run["preset"], "--policy", run["policy"],
                            "--wait-k", str(run.get("wait_k", 3)), "--comet-model", "", "--one-process", "--out",
                            str(root / "run_dev"), *flags])
        reference[row["run"]] = (predictions(root / "run_dev", row["run"], TALKS), row)
    return root, data, flags, reference


@pytest.fixture(scope="module")
def local_ray():
    owned = sweep.ray_session(None, 2)
    yield
    if owned:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the sweep subprocess alone may take 900 s
def test_sweep_gives_the_run_dev_results_and_a_rerun_does_nothing(study, tmp_path):
    root, data, flags, reference = study
    out = tmp_path / "sweep"
    argv = [str(write_grid(tmp_path / "grid.yaml", data)), "--out", str(out), "--workers", "2", "--", *flags]
    # The command users run: as __main__, the module's classes must still reach the workers (pickled by name).
    subprocess.run([sys.executable, "-m", "alignatt_eval.runners.sweep", *argv], cwd=sweep.REPO, check=True, timeout=900)
    rows = [json.loads((out / f"{run}.json").read_text()) for run in ("de.high.wait-k1", "de.high.alignatt")]
    assert [r["run"] for r in rows] == ["de.high.wait-k1", "de.high.alignatt"]
    for row in rows:
        expected, expected_row = reference[row["run"]]
        # Same translations with models loaded once per worker and the ASR cached (run_dev transcribed live).
        assert predictions(out, row["run"], TALKS) == expected
        assert row["bleu"] == expected_row["bleu"] and row["longyaal_cu_ms"] == expected_row["longyaal_cu_ms"]
        assert row["talks"] == TALKS and row["talks_failed"] == {}
        assert (row["asr"], expected_row["asr"]) == ("cached", "live") and "recorded" in row["ca_definition"]
        assert "python -m alignatt_eval.runners.sweep" in row["commands"]["sweep"]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["ran"] == 4 and summary["failed"] == {} and summary["workers"] == 2
    # Each worker loaded the translator, its decoder and the ASR once, however many jobs of both configs it ran.
    assert sorted(summary["models_loaded_per_worker"].values()) == [3, 3]
    # The timeline names each job once, on the worker that ran it, and the two workers overlap in time.
    timeline = summary["timeline"]
    assert len(timeline) == 4 and len({entry["job"] for entry in timeline}) == 4
    assert {entry["worker"] for entry in timeline} == {int(pid) for pid in summary["models_loaded_per_worker"]}
    assert all(0 <= entry["start_s"] < entry["end_s"] <= summary["wall_s"] for entry in timeline)
    first, second = sorted(entry["start_s"] for entry in timeline)[:2]
    assert second - first < 1.0
    assert any((out / "asr_cache").rglob("*.json"))
    assert (out / "quality_latency.png").stat().st_size > 1000
    assert [line.split("\t")[0] for line in (out / "results.tsv").read_text().splitlines()[1:]] == \
        ["de.high.alignatt", "de.high.wait-k1"]

    logs = sorted(out.glob("*/talks/*/instances.log"))
    stamps = [log.stat().st_mtime_ns for log in logs]
    again = sweep.main(argv)  # resumes: every talk is done, nothing runs
    assert json.loads((out / "sweep.json").read_text())["ran"] == 0
    assert [log.stat().st_mtime_ns for log in logs] == stamps
    assert [r["bleu"] for r in again] == [r["bleu"] for r in rows]


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_job(study, local_ray, tmp_path):
    root, data, flags, reference = study
    out = tmp_path / "sweep"
    _, configs = sweep.plan([str(write_grid(tmp_path / "grid.yaml", data, RUNS[:1])), "--out", str(out), "--",
                             *flags])
    job_sweep = sweep.Sweep(sweep.pending_jobs(configs), n_workers=2, retries=1)
    runner = threading.Thread(target=job_sweep.run)
    runner.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        running = list(job_sweep.running.values())
        if running and time.perf_counter() - running[0][2] > 0.5:
            victim = job_sweep.pids[running[0][0]]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=300)
    assert victim is not None and not runner.is_alive()
    assert job_sweep.failed == {} and sum(job_sweep.attempts.values()) == 1 and len(job_sweep.done) == 2
    assert victim not in job_sweep.pids.values()  # replaced by a new worker
    [row] = sweep.score(configs, job_sweep.failed, out, "test")
    assert predictions(out, row["run"], TALKS) == reference[row["run"]][0]
    assert not list(out.glob("*/talks/*.partial"))


@pytest.mark.slow
def test_a_failing_job_is_retried_then_reported_and_the_rest_scored(study, local_ray, tmp_path):
    root, data, flags, reference = study
    out = tmp_path / "sweep"
    # talkB's audio is not a wav: its job fails on every attempt; talkA's run is still scored, over one talk.
    _, configs = sweep.plan([str(write_grid(tmp_path / "grid.yaml", data, RUNS[:1])), "--out", str(out), "--",
                             *flags])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "talkA.wav").symlink_to(data / "wav" / "talkA.wav")
    (broken / "talkB.wav").write_bytes(b"not audio")
    configs = [sweep.Config(c.name, (*c.argv, "--audio-dir", str(broken))) for c in configs]
    job_sweep = sweep.Sweep(sweep.pending_jobs(configs), n_workers=2, retries=1)
    job_sweep.run()
    assert [str(job) for job in job_sweep.failed] == ["de.high.wait-k1/talkB"]
    assert job_sweep.attempts[next(iter(job_sweep.failed))] == 2
    [row] = sweep.score(configs, job_sweep.failed, out, "test")
    assert row["talks"] == ["talkA"] and row["talks_planned"] == 2 and "talkB" in row["talks_failed"]
    assert (out / "results.tsv").read_text().splitlines()[1].split("\t")[4] == "1/2"


@pytest.mark.slow
def test_a_job_over_the_timeout_has_its_worker_stopped_and_fails(study, local_ray, tmp_path):
    root, data, flags, reference = study
    _, configs = sweep.plan([str(write_grid(tmp_path / "grid.yaml", data, RUNS[:1])), "--out", str(tmp_path / "out"),
                             "--", *flags])
    jobs = sweep.pending_jobs(configs)[:1]
    job_sweep = sweep.Sweep(jobs, n_workers=1, retries=0, job_timeout_s=0.5)
    first_pid = None
    runner = threading.Thread(target=job_sweep.run)
    runner.start()
    while first_pid is None and runner.is_alive():
        first_pid = next(iter(job_sweep.pids.values()), None)
        time.sleep(0.05)
    runner.join(timeout=300)
    assert not runner.is_alive() and list(job_sweep.failed) == jobs and job_sweep.done == []
    assert first_pid is not None and first_pid not in job_sweep.pids.values()  # the overdue worker was stopped
