"""The stage runner behind ``./run_all.sh``: notebooks in order, HTML reports, an index page.

Each stage is a parameterised notebook executed with papermill (kernel ``python3`` from the
project's own environment) and rendered to HTML with nbconvert, images embedded. A stage is
skipped when its notebook, the resolved config and the library source are unchanged since its
last successful run (the key is stored next to its report); the heavy work inside a notebook is
cached by the library too, so ``--force`` on one stage reruns only what changed underneath.
The first failing stage stops the run with the notebook, the cell and the error; its HTML
report is still written. One run at a time per output directory (a lock file).

The stages are the studies (``promu_lib.studies``: one module per paper artifact, plus any
named in ``$PROMU_STUDIES``), in the order of their notebooks. Scheduling: before the first
stage that trains, the training jobs of every stage about to run (``study.jobs(cfg)``, the same
function its notebook calls) go through one pass of ``jobs.run_jobs`` (two workers kept busy
from the first pre-training to the last fine-tuning); the notebooks then find them in the
cache. The reader stages (tables and figures) run two at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from promu_lib import locks, paths
from promu_lib.config import (
    QUICK_SEEDS,
    Config,
    add_config_arguments,
    config_from_args,
    config_hash,
    save_config,
)
from promu_lib.errors import PromuError, UsageError, run_command
from promu_lib.io import atomic_write_json
from promu_lib.studies import Study, discover

PARALLEL_READERS = 2  # reader stages executed at once


class StageFailed(PromuError):
    pass


def stages() -> list[Study]:
    """Every stage, in order: the studies."""
    return discover()


def stage_names() -> list[str]:
    return [s.name for s in stages()]


def stage_jobs(cfg: Config, selected: list[Study] | None = None) -> dict[str, list]:
    """{stage name: the jobs its notebook asks for at its default parameters}; stages that
    train nothing are absent."""
    per_stage = {s.name: s.jobs(cfg) for s in (stages() if selected is None else selected)}
    return {name: jobs for name, jobs in per_stage.items() if jobs}


def jobs_of(cfg: Config, names: list[str]) -> list:
    """The jobs of the stages ``names``, each once, in stage order."""
    return _each_once(stage_jobs(cfg, [s for s in stages() if s.name in names]))


def _each_once(per_stage: dict[str, list]) -> list:
    return list(dict.fromkeys(job for jobs in per_stage.values() for job in jobs))


def _library_hash() -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _stage_key(stage: Study, nb_path: Path, cfg: Config) -> str:
    h = hashlib.sha256()
    h.update(nb_path.read_bytes())
    h.update(config_hash(cfg).encode())
    h.update(_library_hash().encode())
    h.update(stage.source.read_bytes())  # a study outside the package has its own source
    return h.hexdigest()[:16]


@contextlib.contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for the whole run (a second run waits); the lock
    file ``<directory>/.run.lock`` stays, naming its last holder (``promu_lib.locks``)."""
    with locks.hold(directory / ".run.lock", "run"):
        yield


def render_html(notebook: Path, target: Path, title: str = "") -> Path:
    """Render an executed notebook to ``target`` (results, no code) and ``<stem>.code.html``
    (with its code), standalone, images embedded (``promu_lib.pages``)."""
    from promu_lib.pages import render_report

    return render_report(notebook, target, title or notebook.stem)[0]


def _failure_message(stage: Study, err: Exception) -> str:
    cell = getattr(err, "exec_count", None) or getattr(err, "cell_index", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    return (
        f"stage '{stage.name}' failed in {_shown(stage.notebook)}, cell {cell}: {ename}: {evalue}"
    )


def _shown(path: Path) -> str:
    """``notebooks/04_table1.ipynb`` for the project's notebooks, the full path otherwise."""
    try:
        return str(path.relative_to(paths.project_root()))
    except ValueError:
        return str(path)


def _notebook(stage: Study) -> Path:
    nb_path = stage.notebook
    if not nb_path.is_file():
        raise StageFailed(f"stage '{stage.name}': notebook {nb_path} is missing")
    return nb_path


def cached_status(stage: Study, cfg: Config, reports: Path) -> dict | None:
    """The stage's last status when it succeeded with the same key and its report exists."""
    key = _stage_key(stage, _notebook(stage), cfg)
    status_file = reports / "status" / f"{stage.name}.json"
    if status_file.is_file() and (reports / f"{stage.notebook.stem}.html").is_file():
        prev = json.loads(status_file.read_text())
        if prev.get("key") == key and prev.get("status") == "ok":
            return prev
    return None


def run_stage(stage: Study, cfg: Config, config_file: Path, reports: Path, force: bool) -> dict:
    """Execute one stage notebook (or skip it when its key is unchanged) and render its report."""
    import papermill as pm

    nb_path = _notebook(stage)
    key = _stage_key(stage, nb_path, cfg)
    executed = reports / "notebooks" / stage.notebook.name
    report = reports / f"{stage.notebook.stem}.html"
    status_file = reports / "status" / f"{stage.name}.json"
    prev = None if force else cached_status(stage, cfg, reports)
    if prev is not None:
        print(f"[promu] {stage.name}: unchanged, skipped ({prev['seconds']:.1f} s last time)")
        return {**prev, "skipped": True}
    print(f"[promu] {stage.name}: running {_shown(stage.notebook)}", flush=True)
    t0 = time.perf_counter()
    executed.parent.mkdir(parents=True, exist_ok=True)
    error: Exception | None = None
    try:
        pm.execute_notebook(
            str(nb_path),
            str(executed),
            parameters={"profile": cfg.profile, "config_file": str(config_file), "force": force},
            kernel_name="python3",
            cwd=str(paths.project_root()),
            progress_bar=False,
            log_output=False,
            # the kernel is local and private to this run: its "TCP without encryption"
            # warning is noise in the log (kernel errors still show at ERROR level)
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except Exception as e:  # papermill wraps the cell error; report it and stop below
        error = e
    seconds = time.perf_counter() - t0
    if executed.is_file():
        render_html(executed, report, stage.title)
    status = {
        "stage": stage.name,
        "notebook": stage.notebook.name,
        "title": stage.title,
        "profile": cfg.profile,
        "status": "ok" if error is None else "failed",
        "seconds": seconds,
        "key": key,
        "report": report.name,
        "error": None if error is None else _failure_message(stage, error),
    }
    atomic_write_json(status_file, status)
    if error is not None:
        raise StageFailed(status["error"] + f" (report: {report})") from error
    print(f"[promu] {stage.name}: done in {seconds:.1f} s")
    return status


def write_index(reports: Path, cfg: Config, statuses: list[dict]) -> Path:
    """``reports/index.html``: the run, the claims' verdicts, Table 1, a thumbnail of every
    figure, every stage with its status, run time and report (``promu_lib.pages``)."""
    from promu_lib.pages import write_index as write_page

    return write_page(reports, cfg, statuses, stages())


def _failed_status(stage: Study, reports: Path, err: Exception) -> dict:
    status_file = reports / "status" / f"{stage.name}.json"
    if status_file.is_file():
        prev = json.loads(status_file.read_text())
        if prev.get("status") == "failed":
            return prev
    return {
        "stage": stage.name,
        "title": stage.title,
        "status": "failed",
        "seconds": 0.0,
        "report": "",
        "error": str(err),
    }


def run_training_jobs(cfg: Config, config_file: Path, stages: list[Study], reports: Path) -> dict:
    """Train every job of ``stages`` in one pass (each study's ``jobs``); a status like a stage's
    (``status`` "failed" with the error when a job failed).

    The pass is a child process (``promu jobs``): this runner never imports torch, so the
    memory the pass held (~0.9 GB with torch) is returned before the notebooks run."""
    import subprocess

    per_stage = stage_jobs(cfg, stages)
    names = [s.name for s in stages if per_stage.get(s.name)]
    print(f"[promu] jobs: training what {', '.join(names)} need, in one pass", flush=True)
    t0 = time.perf_counter()
    status = {
        "stage": "jobs",
        "title": f"Training jobs of {', '.join(names)} (one pass; the notebooks read them)",
        "report": "",
        "status": "ok",
        "error": None,
        "jobs": len(_each_once(per_stage)),  # the same plan, not built again
    }
    cmd = [sys.executable, "-m", "promu_lib.cli", "jobs", "--profile", cfg.profile]
    cmd += ["--config", str(config_file), *(a for n in names for a in ("--stage", n))]
    code = subprocess.run(cmd, cwd=paths.project_root()).returncode
    if code:  # the job's own error and traceback are in the log above
        status |= {"status": "failed", "error": f"a training job failed (`{' '.join(cmd[2:])}` "
                   f"exited with {code}; its traceback is in the log)"}  # fmt: skip
    status["seconds"] = time.perf_counter() - t0
    atomic_write_json(reports / "status" / "jobs.json", status)
    if not status["error"]:
        print(f"[promu] jobs: {status['jobs']} done in {status['seconds']:.1f} s")
    return status


def collect_claims(cfg: Config) -> list[Path]:
    """``<figures>/claims.{csv,md}``: every study's claims of this run's figures directory, in
    stage order (``promu_lib.evidence.collect``)."""
    from promu_lib.evidence import collect

    return collect(paths.resolve(cfg.run.figures_dir), stage_names())


def _groups(stages: list[Study]) -> list[list[Study]]:
    """Consecutive reader stages together, every other stage alone."""
    groups: list[list[Study]] = []
    for stage in stages:
        if stage.reader and groups and groups[-1][-1].reader:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def run_pipeline(cfg: Config, only: list[str] | None = None, force: bool = False) -> int:
    """Run the stages of ``cfg``'s profile in order; 0 on success, 1 at the first failure.

    The training jobs of every stage that will execute run in one pass before the first stage
    that needs them (``run_training_jobs``); reader stages then run two at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    unknown = sorted(set(only or []) - set(stage_names()))
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; stages are: {', '.join(stage_names())}")
    reports = paths.resolve(cfg.run.reports_dir)
    out = paths.resolve(cfg.output_root())
    selected = [s for s in stages() if not only or s.name in only]
    with run_lock(out), run_lock(reports):  # reports/ may be shared by profiles
        config_file = save_config(cfg, out / "config.yaml")
        pending = [s for s in selected if force or cached_status(s, cfg, reports) is None]
        per_stage = stage_jobs(cfg, pending)
        training = [s for s in pending if per_stage.get(s.name)]
        statuses: list[dict] = []
        t0 = time.perf_counter()
        code = 0
        for group in _groups(selected):
            try:
                if training and group[0] is training[0]:
                    statuses.append(run_training_jobs(cfg, config_file, training, reports))
                    if statuses[-1]["status"] == "failed":
                        raise StageFailed(statuses[-1]["error"])
                if len(group) == 1:
                    statuses.append(run_stage(group[0], cfg, config_file, reports, force))
                    continue
                with ThreadPoolExecutor(PARALLEL_READERS) as pool:
                    futures = [
                        pool.submit(run_stage, st, cfg, config_file, reports, force) for st in group
                    ]
                    failure = None
                    for stage, fut in zip(group, futures):
                        if fut.cancelled():  # after a failure, never started
                            continue
                        try:
                            statuses.append(fut.result())
                        except StageFailed as e:
                            failure = failure or e
                            statuses.append(_failed_status(stage, reports, e))
                            for later in futures:
                                later.cancel()  # not started yet: not started at all
                    if failure is not None:
                        raise failure
            except StageFailed as e:
                if not statuses or statuses[-1].get("status") != "failed":
                    statuses.append(_failed_status(group[0], reports, e))
                print(f"[promu] {e}", file=sys.stderr)
                code = 1
                break
        collect_claims(cfg)
        index = write_index(reports, cfg, statuses)
    print(f"[promu] {len(statuses)} stage(s) in {time.perf_counter() - t0:.1f} s; report: {index}")
    return code


def _jobs_command(args) -> int:
    from promu_lib.jobs import _with_dependencies, run_jobs

    cfg = config_from_args(args)
    if args.executor:
        cfg = cfg.replace(**{"run.executor": args.executor})
    if args.dry_run and cfg.run.executor != "slurm":
        raise UsageError("--dry-run prints the sbatch scripts of run.executor=slurm; add "
                         "--executor slurm")  # fmt: skip
    jobs = jobs_of(cfg, args.stage or stage_names())
    if args.dry_run:
        from promu_lib.slurm import dry_run

        dry_run(cfg, _with_dependencies(jobs))
        return 0
    run_jobs(cfg, jobs, progress=True)
    return 0


def _run_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument(
        "--only", action="append", metavar="STAGE", help="run only this stage (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="rerun stages even when cached")
    p.add_argument(
        "--quick", action="store_true", help="one fine-tuning seed (run.seeds=[0]): every table "
        "and figure in about a third of the training, without intervals worth the name",
    )  # fmt: skip
    p.set_defaults(func=lambda a: run_pipeline(run_config(a), only=a.only, force=a.force))


def run_config(args) -> Config:
    """The run's config: the profile, file and ``--set`` overrides; ``--quick`` last."""
    cfg = config_from_args(args)
    return cfg.replace(**{"run.seeds": QUICK_SEEDS}) if args.quick else cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m promu_lib.pipeline`` = ``promu run`` (what ./run_all.sh calls), without
    importing the other commands' modules: the runner stays free of torch (~0.9 GB resident)
    while the training pass and the notebooks run."""
    import argparse

    parser = argparse.ArgumentParser(prog="promu run", description=run_pipeline.__doc__)
    _run_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args))


def register(sub) -> None:
    """``promu run``, ``promu jobs`` and ``promu stages``."""
    _run_arguments(sub.add_parser("run", help="run the stages of a profile (./run_all.sh)"))

    j = sub.add_parser(
        "jobs", help="train (or find cached) every pre-training and fine-tuning a stage needs"
    )
    add_config_arguments(j)
    j.add_argument(
        "--stage", action="append", metavar="STAGE", help="this stage's jobs (repeatable; "
        "default: every stage)", choices=stage_names(),
    )  # fmt: skip
    j.add_argument(
        "--executor", choices=("local", "slurm"), help="where the jobs run (run.executor): "
        "worker processes here, or one Slurm job each (README, 'On a Slurm cluster')",
    )  # fmt: skip
    j.add_argument(
        "--dry-run", action="store_true", help="with --executor slurm: write and print the "
        "sbatch script of every job that would be submitted, and submit nothing",
    )  # fmt: skip
    j.set_defaults(func=_jobs_command)

    s = sub.add_parser("stages", help="list the stages and their notebooks")
    s.set_defaults(func=lambda a: print(_stage_list()))


def _stage_list() -> str:
    """One line per stage: its name, its notebook, its title."""
    found = stages()
    width = max(len(x.name) for x in found)
    return "\n".join(f"{x.name:{width}s}  {_shown(x.notebook)}  {x.title}" for x in found)


if __name__ == "__main__":
    sys.exit(main())
