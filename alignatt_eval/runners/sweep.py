"""Sweeps at scale: every (config, talk) job of a grid on Ray, models loaded once per worker, ASR cached.

    python -m alignatt_eval.runners.sweep GRID.yaml --out results/sweep/NAME [--workers N] [--address auto] [-- AGENT FLAGS]

GRID.yaml names the dev set and the runs; a list value expands into one run per value (all combinations):

    data: eval/synth/proxy3            # MCIF-layout dev set, as `alignatt_eval.runners.run_dev --data`
    lang: de                           # or a list
    n_talks: 3                         # or talks: [OiqEWDVtWk, ...] (default: every talk)
    agent: {asr_backend: whisper}      # agent options shared by every run (more after `--` on the command line)
    runs:
      - {preset: [low, high], policy: alignatt, agent: {source_margin_ms: [0, 500]}}
      - {preset: low, policy: wait-k, wait_k: [2, 4, 6]}
      - {step_ms: [500, 2000], policy: local-agreement}   # a step size instead of a preset
      - {preset: low, policy: alignatt, name: "{lang}.published", agent: {gate: published}}

Each run is exactly an `alignatt_eval.runners.run_dev` configuration, and each job goes through the same code as there: the
simuleval command line of that run, parsed and evaluated by SimulEval in the worker's process, with the agent
built around the worker's loaded models (alignatt_eval/runners/in_process.py). A worker is a Ray actor, one per GPU or per CPU
slot; jobs that share a backbone reuse its models. ASR answers are cached per window (`--asr-cache-dir`, default
OUT/asr_cache), so a talk is transcribed once per ASR model and chunk size; computation-aware latency still
counts the recorded ASR time. A job whose worker dies or that raises goes back to the end of the queue up to
--retries more times (a dead worker is replaced by a fresh one), then is marked failed. Finished talks stay on disk (OUT/RUN/talks/TALK), so a rerun resumes and
never repeats one. Every run is scored as `alignatt_eval.runners.run_dev` scores it (OmniSTEval on the merged talks), over the
talks that finished; rows land in OUT/RUN.json and OUT/results.tsv, the plot in OUT/quality_latency.png.

Ray is the optional extra `.[sweep]`. `--address auto` (or ray://HOST:10001) joins a running cluster, e.g. one
started on a SLURM allocation as Ray documents it; the repository and the data must then sit at the same path
on every node (a shared filesystem), since workers import the code and read the talks from there.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from alignatt.factory import check_known
from alignatt.model_pool import ModelPool
from alignatt_eval.runners import run_dev
from alignatt_eval.runners.in_process import run_simuleval
from alignatt_eval.analysis.plot import plot
from alignatt_eval.analysis.scoring import finite

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
GRID_KEYS = {"data", "audio_dir", "lang", "talks", "n_talks", "comet_model", "agent", "runs"}
RUN_KEYS = {"preset", "step_ms", "policy", "wait_k", "lang", "name", "agent"}


@dataclass(frozen=True)
class Config:
    """One run of the grid: its name and the `alignatt_eval.runners.run_dev` argv that defines it."""

    name: str
    argv: tuple[str, ...]

    def run(self) -> run_dev.Run:
        args, agent_flags = run_dev.parse_args(list(self.argv))
        return run_dev.Run(args, agent_flags, list(self.argv))

    @functools.cached_property  # the scheduler asks for it at every dispatch; parse the argv once
    def step_ms(self) -> float:
        return run_dev.step_ms(run_dev.parse_args(list(self.argv))[0])


@dataclass(frozen=True)
class Job:
    config: Config
    talk: str

    @property
    def asr_key(self) -> tuple[str, float]:
        """Jobs with one key ask the ASR for the same windows (same talk and step). A scheduling hint only: the
        cache itself is keyed on the audio and the ASR's options, so a wrong guess costs time, never results."""
        return self.talk, self.config.step_ms

    def __str__(self) -> str:
        return f"{self.config.name}/{self.talk}"


def _combinations(options: dict) -> list[dict]:
    """Every combination of the list-valued options (a scalar is a list of one)."""
    choices = [value if isinstance(value, list) else [value] for value in options.values()]
    return [dict(zip(options, values)) for values in itertools.product(*choices)]


def agent_flags(options: dict) -> list[str]:
    """Agent options as flags ({source_margin_ms: 500} -> --source-margin-ms 500; booleans as --x / --no-x)."""
    check_known(options)
    flags = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            flags += [f"--{flag}", str(value)]
    return flags


def _default_name(lang: str, runner: dict, agent: dict) -> str:
    policy = runner.get("policy", "alignatt")
    label = f"wait-k{runner.get('wait_k', 3)}" if policy == "wait-k" else policy
    knobs = "".join(f".{key.replace('_', '-')}={value}" for key, value in agent.items())
    point = run_dev.operating_point(runner.get("preset", "low"), runner.get("step_ms"))
    return f"{lang}.{point}.{label}{knobs}"


def expand_grid(grid: dict, out: Path, extra_agent_flags: list[str] = ()) -> list[Config]:
    """The runs of a grid, each as the `alignatt_eval.runners.run_dev` argv that defines it."""
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ValueError(f"unknown grid key(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(GRID_KEYS))})")
    if not grid.get("runs"):
        raise ValueError("the grid has no runs")
    shared = ["--out", str(out)]
    for key in ("data", "audio_dir", "comet_model", "n_talks"):
        if key in grid:
            shared += [f"--{key.replace('_', '-')}", str(grid[key])]
    if grid.get("talks"):
        shared += ["--talks", *map(str, grid["talks"])]
    common_agent = [*agent_flags(grid.get("agent") or {}), *extra_agent_flags]
    configs = []
    for entry in grid["runs"]:
        unknown = set(entry) - RUN_KEYS
        if unknown:
            raise ValueError(f"unknown run key(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(RUN_KEYS))})")
        runner_options = {k: v for k, v in entry.items() if k not in ("agent", "name")}
        runner_options.setdefault("lang", grid.get("lang", "de"))
        for runner in _combinations(runner_options):
            for agent in _combinations(entry.get("agent") or {}):
                name = (entry["name"].format(**runner, **agent) if "name" in entry
                        else _default_name(runner["lang"], runner, agent))
                argv = [*shared, "--name", name, *(f for key, value in runner.items()
                                                   for f in (f"--{key.replace('_', '-')}", str(value))),
                        *common_agent, *agent_flags(agent)]
                run_dev.parse_args(argv)  # the runner's own checks, before anything runs
                configs.append(Config(name, tuple(argv)))
    names = Counter(c.name for c in configs)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise ValueError(f"several runs are named {', '.join(repeated)}: give each run entry a `name` template "
                         "that includes the options it sweeps, e.g. name: \"{lang}.m{source_margin_ms}\"")
    return configs


def pending_jobs(configs: list[Config]) -> list[Job]:
    """Jobs whose talk has no log yet, config by config (so the first config's talks fill the ASR cache)."""
    jobs = []
    for config in configs:
        run = config.run()
        jobs += [Job(config, talk) for talk in run.talks if not (run.talk_dir(talk) / "instances.log").is_file()]
    return jobs


class SweepWorker:
    """Runs jobs one after another in one process (a Ray actor), loading each model once."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.models = ModelPool()
        self._runs: dict[Config, run_dev.Run] = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> dict:
        if job.config not in self._runs:
            self._runs[job.config] = job.config.run()
        run = self._runs[job.config]
        run.run_talk(job.talk, execute=lambda command, folder, _: run_simuleval(command, folder, self.models))
        return {"models_loaded": len(self.models.loads)}


@dataclass
class WorkerSpec:
    cpus: float = 1.0
    gpus: float = 0.0
    threads: int = 1


@dataclass
class Sweep:
    """Schedules jobs on a fixed number of workers; replaces a worker that dies and retries its job."""

    jobs: list[Job]
    n_workers: int
    spec: WorkerSpec = field(default_factory=WorkerSpec)
    retries: int = 2
    job_timeout_s: float | None = None
    done: list[Job] = field(default_factory=list)
    failed: dict[Job, str] = field(default_factory=dict)
    attempts: Counter = field(default_factory=Counter)
    running: dict = field(default_factory=dict)  # ObjectRef -> (worker, job, start time)
    pids: dict = field(default_factory=dict)  # worker -> process id
    models_loaded: dict = field(default_factory=dict)  # worker process id -> models it has loaded so far
    asr_recorded: set = field(default_factory=set)  # asr keys of jobs that finished, so their ASR is cached
    # One dict per settled attempt (done, failed or retried): the job, its worker's pid, start and end seconds.
    timeline: list = field(default_factory=list)

    def __post_init__(self):
        self.jobs = deque(self.jobs)  # the queue: a retried job goes to its end
        self._actor = None
        self._started = time.perf_counter()
        self._stopped = set()  # workers killed for a job over the timeout, until their job settles

    def _new_workers(self, count: int) -> list:
        """Start `count` workers together (each imports torch and the models' code: seconds apiece)."""
        import ray

        if self._actor is None:
            self._actor = ray.remote(SweepWorker).options(num_cpus=self.spec.cpus, num_gpus=self.spec.gpus,
                                                          max_restarts=0)
        workers = [self._actor.remote(self.spec.threads) for _ in range(count)]
        self.pids.update(zip(workers, ray.get([worker.pid.remote() for worker in workers])))
        return workers

    def _settle(self, ref, progress: tqdm) -> object | None:
        """The outcome of a finished job; returns its worker if it is still usable."""
        import ray

        worker, job, started = self.running.pop(ref)
        self.timeline.append({"job": str(job), "worker": self.pids.get(worker),
                              "start_s": round(started - self._started, 1),
                              "end_s": round(time.perf_counter() - self._started, 1)})
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            dead = not isinstance(err, ray.exceptions.RayTaskError)  # the worker process is gone
            self.attempts[job] += 1
            reason = f"{type(err).__name__}: {err}".strip()
            if self.attempts[job] <= self.retries:
                logger.warning("%s: attempt %d failed (%s); retrying", job, self.attempts[job], reason.splitlines()[0])
                self.jobs.append(job)
            else:
                logger.error("%s: failed after %d attempts: %s", job, self.attempts[job], reason)
                self.failed[job] = reason
                progress.update()
            if dead:
                ray.kill(worker)
                self.pids.pop(worker, None)
                self._stopped.discard(worker)
                return self._new_workers(1)[0]
            return worker
        self.done.append(job)
        self.asr_recorded.add(job.asr_key)
        self.models_loaded[self.pids[worker]] = result["models_loaded"]
        progress.update()
        return worker

    def _stop_overdue(self) -> None:
        import ray

        now = time.perf_counter()
        for worker, job, started in self.running.values():
            if self.job_timeout_s and now - started > self.job_timeout_s and worker not in self._stopped:
                logger.warning("%s: over %.0f s, stopping its worker", job, self.job_timeout_s)
                ray.kill(worker)  # its job then ends with an actor error and is retried or failed
                self._stopped.add(worker)

    def next_job(self) -> Job:
        """The first queued job whose ASR no running job is recording right now; else the first job. Two jobs
        on one talk and step would both transcribe it: the second one is worth starting only once the cache
        holds the talk."""
        recording = {job.asr_key for _, job, _ in self.running.values() if job.asr_key not in self.asr_recorded}
        for index, job in enumerate(self.jobs):
            if job.asr_key not in recording:
                del self.jobs[index]
                return job
        return self.jobs.popleft()

    def run(self) -> None:
        import ray

        queue = self.jobs
        idle = self._new_workers(min(self.n_workers, len(queue)))
        with tqdm(total=len(queue), desc="sweep", unit="job") as progress:
            while queue or self.running:
                while queue and idle:
                    worker, job = idle.pop(), self.next_job()
                    self.running[worker.run.remote(job)] = (worker, job, time.perf_counter())
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                for ref in ready:
                    worker = self._settle(ref, progress)
                    if worker is not None:
                        idle.append(worker)
                progress.set_postfix(failed=len(self.failed), retried=sum(self.attempts.values()), refresh=False)
                self._stop_overdue()
        for worker in idle:
            ray.kill(worker)


def score(configs: list[Config], failed: dict[Job, str], out: Path, sweep_command: str) -> list[dict]:
    """Each run scored over its finished talks (as alignatt_eval.runners.run_dev scores it); rows to OUT/RUN.json and results.tsv."""
    rows = []
    for config in configs:
        run = config.run()
        finished = [t for t in run.talks if (run.talk_dir(t) / "instances.log").is_file()]
        failures = {job.talk: reason for job, reason in failed.items() if job.config == config}
        if not finished:
            logger.error("%s: no talk finished, not scored", config.name)
            continue
        planned = len(run.talks)
        run.talks = finished
        row = run.score()
        row["talks_planned"] = planned
        row["talks_failed"] = failures
        row["commands"]["sweep"] = sweep_command
        run_dev.write_row(out, row)
        rows.append(row)
    return rows


def ray_session(address: str | None, local_cpus: int | None):
    """Join the cluster at `address`, or start a local Ray; workers import the code from this checkout."""
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                             os.environ.get("PYTHONPATH")]))}}
    if ray.is_initialized():  # a caller (e.g. a test or a notebook) already holds a session
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=local_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    return True


def worker_spec(args: argparse.Namespace) -> WorkerSpec:
    """What one worker reserves: a GPU each where the cluster has them (unless told), else CPU cores."""
    import ray

    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return WorkerSpec(args.cpus_per_worker, gpus, args.threads or max(1, int(args.cpus_per_worker)))


def worker_count(requested: int | None, spec: WorkerSpec) -> int:
    import ray

    if requested:
        return requested
    resources = ray.cluster_resources()
    if spec.gpus:
        return max(1, int(resources.get("GPU", 0) // spec.gpus))
    return max(1, int(resources.get("CPU", 1) // spec.cpus))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.runners.sweep", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Flags after `--` go to the agent in every run.")
    parser.add_argument("grid", help="grid YAML (see the module docstring)")
    parser.add_argument("--out", required=True, help="results folder (rows, per-talk logs, plot)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (auto, or ray://HOST:10001); default: a local Ray")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers (default: one per GPU with --gpus-per-worker, else one per --cpus-per-worker)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU cores a worker reserves")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="GPUs a worker reserves (default: 1 where the cluster has GPUs, else 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: its reserved CPU cores)")
    parser.add_argument("--retries", type=int, default=2, help="attempts after the first before a job fails")
    parser.add_argument("--job-timeout-s", type=float, default=None,
                        help="stop a job's worker after this long (the job is retried or fails)")
    parser.add_argument("--no-asr-cache", action="store_true",
                        help="transcribe every job anew (default: cache ASR answers in OUT/asr_cache)")
    return parser


def plan(argv: list[str]) -> tuple[argparse.Namespace, list[Config]]:
    """The parsed options and the expanded runs (no Ray needed)."""
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    grid = yaml.safe_load(Path(args.grid).read_text(encoding="utf-8")) or {}
    if not args.no_asr_cache and not any(f.split("=")[0] == "--asr-cache-dir" for f in extra) \
            and "asr_cache_dir" not in (grid.get("agent") or {}):
        extra = [*extra, "--asr-cache-dir", str(Path(args.out) / "asr_cache")]
    return args, expand_grid(grid, Path(args.out), extra)


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, configs = plan(argv)
    jobs = pending_jobs(configs)
    total = sum(len(c.run().talks) for c in configs)
    logger.info("%d runs, %d jobs, %d already done", len(configs), total, total - len(jobs))
    started = time.perf_counter()
    sweep = Sweep(jobs, 0, WorkerSpec(), args.retries, args.job_timeout_s)
    if jobs:
        import ray

        owned = ray_session(args.address, None)
        try:
            sweep.spec = worker_spec(args)
            sweep.n_workers = worker_count(args.workers, sweep.spec)
            sweep.run()
        finally:
            if owned:
                ray.shutdown()
    rows = score(configs, sweep.failed, Path(args.out), shlex.join(["python", "-m", "alignatt_eval.runners.sweep", *argv]))
    summary = {"runs": len(configs), "jobs": total, "ran": len(sweep.done), "failed": {str(j): r for j, r in
                                                                                      sweep.failed.items()},
               "retried": sum(sweep.attempts.values()), "workers": sweep.n_workers,
               "worker": dataclasses.asdict(sweep.spec), "models_loaded_per_worker": sweep.models_loaded,
               "wall_s": round(time.perf_counter() - started, 1), "timeline": sweep.timeline}
    Path(args.out, "sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plotted = [r for r in rows if finite(r.get("longyaal_cu_ms"))]
    if plotted:
        plot(plotted, Path(args.out) / "quality_latency.png")
    logger.info("\n%s", (Path(args.out) / "results.tsv").read_text(encoding="utf-8") if rows else "no rows")
    logger.info("%d jobs run, %d failed, %d retries, %.0f s", len(sweep.done), len(sweep.failed),
                summary["retried"], summary["wall_s"])
    return rows


if __name__ == "__main__":
    # Run the main of the imported alignatt_eval.runners.sweep, not of this __main__ copy: Ray pickles a __main__ class by value
    # (its cached_property holds a lock that cannot be pickled), and an alignatt_eval.runners.sweep class by name, as workers import it.
    from alignatt_eval.runners.sweep import main as sweep_main

    sweep_main()
