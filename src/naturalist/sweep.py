"""The hyperparameter sweep: a W&B sweep config from params.yaml, run by Optuna (or by W&B).

``sweep:`` in params.yaml is a W&B sweep config whose parameter names are dotted ``model.*`` /
``train.*`` keys. Each trial applies its values over the base params, validates them like any
other params, and trains with ``runs.train_scratch``: the same training loop as train_scratch.

Engines:

- ``optuna`` (default): grid -> GridSampler, random -> RandomSampler, bayes -> TPESampler;
  ``early_terminate: hyperband`` -> HyperbandPruner fed with each epoch's val accuracy. The study
  lives in an Optuna storage URL (default: the SQLite file ``.sweep/optuna.db``, outside DVC's
  outputs), so a sweep that was stopped resumes and keeps its finished trials. Trial folders
  (dvclive curves, checkpoints) live next to it under ``.sweep/<study>/`` for the same reason;
  the stage copies them into its outputs at the end.
- ``wandb``: the same config becomes a W&B sweep and ``wandb.agent`` runs the same trial
  function. It needs a W&B login and server.

The study name is a hash of everything that decides a trial's result (the sweep's search
config, the base model/train params and seed, the split data, the training code), so a changed
config starts a fresh study while ``run_cap`` can be raised to continue one.

Across machines: a ``postgresql://`` storage shares the study. ``python -m naturalist.sweep
worker`` (on any machine with the repo and the data) takes trials from it until ``run_cap``;
the stage on the main machine runs trials too, waits for the last running one, then writes the
outputs over every machine's trials. A worker that dies stops its trial's heartbeat: after
``sweep.grace_period`` seconds Optuna marks the trial failed (listed as interrupted) and queues
one retry with the same values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from naturalist import data, models, runs, training
from naturalist.errors import PipelineError
from naturalist.params import STORAGE_ENV, Params, SweepParameter, SweepParams, load_params
from naturalist.runs import Splits, train_scratch
from naturalist.sweep_report import TrialRecord, best_record, write_results
from naturalist.sweep_space import (
    apply_overrides,
    decode_params,
    describe,
    make_pruner,
    make_sampler,
    optuna_distributions,
    trial_budget,
    wandb_sweep_config,
)
from naturalist.training import EpochMetrics, FitResult

SWEEP_DIR = Path(".sweep")  # git-ignored, outside every DVC output
CHECKPOINT = "model.pt"
DVCLIVE = "dvclive"
# The modules whose code decides a trial's result: a change to them starts a fresh study.
TRAINING_CODE = (models, training, data, runs)

Report = Callable[[EpochMetrics], None]


# --------------------------------------------------------------------------------------------
# Identity: one study per (search config, base params, data, training code)


def _file_digest(digest: Any, path: Path) -> None:
    digest.update(path.name.encode() + b"\0")
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def _parameter_signature(parameter: SweepParameter) -> dict[str, Any]:
    if parameter.kind in ("categorical", "constant"):
        return {"choices": parameter.choices}
    return {"kind": parameter.kind, "min": parameter.min, "max": parameter.max, "q": parameter.q}


def sweep_fingerprint(params: Params, split_dir: Path) -> str:
    """Hash of what decides every trial's result; run_cap, engine and storage are left out."""
    sweep = params.sweep
    config = {
        "method": sweep.method,
        "metric": sweep.metric.model_dump(),
        "early_terminate": sweep.early_terminate and sweep.early_terminate.model_dump(),
        "parameters": {k: _parameter_signature(p) for k, p in sorted(sweep.parameters.items())},
        "seed": params.seed,
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in sorted(Path(split_dir).iterdir()):
        if path.is_file() and not path.name.startswith("test_"):  # the test split is not used
            _file_digest(digest, path)
    for module in TRAINING_CODE:
        _file_digest(digest, Path(str(module.__file__)))
    return digest.hexdigest()[:12]


def study_name(params: Params, split_dir: Path) -> str:
    return f"sweep-{sweep_fingerprint(params, split_dir)}"


# --------------------------------------------------------------------------------------------
# One trial, shared by both engines (and by any worker process that builds the same context)


@dataclass
class SweepContext:
    """What every trial needs. A worker on another machine builds the same one from the same
    params and data (``SweepContext.create``) and gets the same study name."""

    params: Params
    splits: Splits
    study_name: str
    work_dir: Path  # <sweep dir>/<study name>: one folder per trial, outside DVC outputs
    progress: bool = True

    @classmethod
    def create(
        cls, params: Params, split_dir: Path, *, sweep_dir: Path = SWEEP_DIR, progress: bool = True
    ) -> SweepContext:
        name = study_name(params, split_dir)
        return cls(params, Splits.load(split_dir), name, Path(sweep_dir) / name, progress)

    def trial_dir(self, number: int) -> Path:
        return self.work_dir / f"trial_{number:03d}"

    def checkpoint(self, number: int) -> Path:
        return self.trial_dir(number) / CHECKPOINT


def run_trial(
    context: SweepContext,
    number: int,
    overrides: Mapping[str, Any],
    *,
    report: Report | None = None,
    wandb_logging: bool = True,
) -> FitResult:
    """Train trial ``number``: the base params with ``overrides``, via ``runs.train_scratch``.

    Its dvclive folder and best checkpoint go to ``context.trial_dir(number)``. ``report`` sees
    every epoch's metrics; a pruner stops the trial by raising from it (optuna.TrialPruned).
    ``wandb_logging=False`` keeps the run from starting a W&B run of its own (the W&B engine's
    agent already has one).
    """
    params = apply_overrides(context.params, overrides)
    if not wandb_logging:
        params = params.model_copy(
            update={"wandb": params.wandb.model_copy(update={"mode": "disabled"})}
        )
    folder = context.trial_dir(number)
    shutil.rmtree(folder, ignore_errors=True)
    return train_scratch(
        params,
        context.splits,
        dvclive_dir=folder / DVCLIVE,
        model_path=folder / CHECKPOINT,
        run_name=f"{context.study_name}-trial-{number}",
        group=context.study_name,
        on_epoch=report,
        progress=context.progress,
    )


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(
        name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def make_objective(
    context: SweepContext, *, worker: str | None = None
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: suggest, train, report each epoch's val acc, return the best.

    A crash is re-raised after its message is stored as the trial's ``error`` (Optuna marks the
    trial failed and the loop goes on); an interrupt (Ctrl-C, SIGTERM) marks it ``interrupted``
    so that the next run retries it. ``worker`` (shared storage) is stored as the trial's
    ``worker`` attribute: which machine and process ran it.
    """
    sweep = context.params.sweep
    distributions = optuna_distributions(sweep)
    last_epoch = context.params.train.epochs  # fixed whenever a pruner is on

    def objective(trial: optuna.Trial) -> float:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        try:
            encoded = {name: _suggest(trial, name, d) for name, d in distributions.items()}
            overrides = decode_params(sweep, encoded)

            def report(metrics: EpochMetrics) -> None:
                trial.report(metrics.val_acc, metrics.epoch)
                # cutting at the last epoch saves nothing and would discard a finished trial
                if metrics.epoch < last_epoch and trial.should_prune():
                    raise optuna.TrialPruned(
                        f"val acc {metrics.val_acc:.4f} at epoch {metrics.epoch}"
                    )

            result = run_trial(context, trial.number, overrides, report=report)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            raise
        except BaseException:
            trial.set_user_attr("interrupted", True)
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        return result.best_val_acc

    return objective


# --------------------------------------------------------------------------------------------
# The Optuna engine


def default_storage(sweep_dir: Path = SWEEP_DIR) -> str:
    return f"sqlite:///{Path(sweep_dir) / 'optuna.db'}"


def masked(url: str) -> str:
    """A storage URL fit to print: any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://..." if "@" in url else url


def is_shared(url: str) -> bool:
    """Whether other machines can share the study: any storage but a local SQLite file."""
    return not url.startswith("sqlite")


def storage_url(url: str) -> str:
    """The SQLAlchemy URL to open: ``postgresql://`` (or ``postgres://``) goes through psycopg 3,
    the driver this project installs; a URL naming its driver is kept as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def resolve_storage(
    params: Params, sweep_dir: Path = SWEEP_DIR, override: str | None = None
) -> str:
    """The study's storage URL: ``override`` (a worker's --storage), else $NATURALIST_SWEEP_STORAGE,
    else ``sweep.storage``, else the local SQLite file. Only the first two may hold a password
    (params.yaml is committed); otherwise libpq reads PGPASSWORD or ~/.pgpass."""
    for source, url in (
        ("--storage", override),
        (STORAGE_ENV, os.environ.get(STORAGE_ENV)),
        ("sweep.storage", params.sweep.storage),
    ):
        if url:
            if "://" not in url:
                raise PipelineError(f"{source}: {masked(url)!r} is not a storage URL")
            return url
    return default_storage(sweep_dir)


def _scrubbed(error: BaseException, url: str) -> str:
    """An error's first line, with the URL's password (if any) masked."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


def _retry_lost_trial(grace_period: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's heartbeat callback: a trial whose worker died is retried once, same values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        again = not trial.system_attrs.get("retry_history")
        print(
            f"sweep: trial {trial.number} lost its worker ({trial.user_attrs.get('worker', '?')}: "
            f"no heartbeat for {grace_period}s); "
            + ("retrying it with the same values" if again else "already a retry, not retried"),
            flush=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, trial)

    return callback


def make_storage(url: str, sweep: SweepParams) -> str | optuna.storages.RDBStorage:
    """What Optuna opens: a local SQLite URL as it is; a shared storage as an RDBStorage with
    heartbeats (a trial without one for ``sweep.grace_period`` seconds is failed and retried)."""
    if not is_shared(url):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return url
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage_url(url),
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=sweep.heartbeat_interval,
                    grace_period=sweep.grace_period,
                    heartbeat_stale_trial_callback=_retry_lost_trial(sweep.grace_period),
                )
        except (IntegrityError, ProgrammingError) as error:
            # Processes that start together on an empty database race to create Optuna's
            # tables; the loser's CREATE fails, and the tables exist once the winner is done.
            if attempt == 4:
                raise PipelineError(
                    f"sweep.storage: cannot open {masked(url)} ({_scrubbed(error, url)})"
                ) from None
            time.sleep(0.5 + attempt)
        except Exception as error:
            raise PipelineError(
                f"sweep.storage: cannot open {masked(url)} ({_scrubbed(error, url)})"
            ) from None
    raise AssertionError("unreachable")


def open_study(
    params: Params,
    storage: str | optuna.storages.BaseStorage,
    name: str,
    *,
    create: bool = True,
    url: str | None = None,
) -> optuna.Study:
    """Create the study, or load it when a previous run left it in ``storage``.
    ``create=False`` only loads it (KeyError when it is not there yet)."""
    url = url or (storage if isinstance(storage, str) else "")
    if isinstance(storage, str):
        storage = make_storage(storage, params.sweep)
    common = {
        "storage": storage,
        "study_name": name,
        "sampler": make_sampler(params.sweep, params.seed),
        "pruner": make_pruner(params.sweep, params.train.epochs),
    }
    try:
        if not create:
            return optuna.load_study(**common)
        return optuna.create_study(direction="maximize", load_if_exists=True, **common)
    except KeyError:
        if create:
            raise
        raise KeyError(name) from None
    except Exception as error:
        raise PipelineError(
            f"sweep.storage: cannot open {masked(url)} ({_scrubbed(error, url)})"
        ) from None


def wait_for_study(
    params: Params, storage: optuna.storages.BaseStorage, name: str, url: str, timeout: float
) -> optuna.Study:
    """A worker's study: load it, waiting up to ``timeout`` seconds for the stage to create it."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            return open_study(params, storage, name, create=False, url=url)
        except KeyError:
            pass
        if not told:
            others = ", ".join(optuna.get_all_study_names(storage)) or "none"
            print(
                f"sweep worker: waiting for study {name} in {masked(url)} (there now: {others}); "
                "start `dvc repro sweep` on the main machine. If it runs and the names differ, "
                "this machine's params, data or code differ from it: git pull, dvc pull split",
                flush=True,
            )
            told = True
        if time.monotonic() > deadline:
            raise PipelineError(
                f"sweep worker: study {name} did not appear in {masked(url)} within {timeout:.0f}s"
            )
        time.sleep(min(5.0, params.sweep.heartbeat_interval))


def trial_state(trial: FrozenTrial) -> str:
    """complete | pruned | failed | interrupted | running | waiting."""
    if trial.state == TrialState.FAIL:
        # A crash stores its error; a trial without one was stopped from outside.
        return "failed" if "error" in trial.user_attrs else "interrupted"
    return trial.state.name.lower()


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one retries: queued by a resumed run, or by Optuna's heartbeat callback."""
    link = trial.user_attrs.get("retry_of")
    return trial.system_attrs.get("failed_trial") if link is None else link


def recover_interrupted(study: optuna.Study, *, local: bool) -> list[int]:
    """Queue one retry (same params) of every trial a stopped process left unfinished.

    With local (SQLite) storage no other process can own a RUNNING trial, so those are marked
    failed first. Shared storage (workers on other machines) leaves them, and the trials that
    lost their heartbeat, to Optuna's heartbeat callback; only trials stopped by Ctrl-C or
    SIGTERM are queued here. Returns the numbers of the trials that will be retried.
    """
    if local:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    retried = {retry_of(t) for t in trials}
    queued = []
    for trial in trials:
        if not local and not trial.user_attrs.get("interrupted"):
            continue
        if trial_state(trial) == "interrupted" and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            queued.append(trial.number)
    return queued


def state_counts(study: optuna.Study) -> Counter[str]:
    return Counter(trial_state(t) for t in study.get_trials(deepcopy=False))


def _finished(counts: Counter[str]) -> int:
    return counts["complete"] + counts["pruned"] + counts["failed"]


def _keep_best_checkpoint(context: SweepContext, study: optuna.Study) -> None:
    """Delete the checkpoints of complete trials that are not the best (they are never used)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    best = max(complete, key=lambda t: (t.value, -t.number))
    for trial in complete:
        if trial.number != best.number:
            context.checkpoint(trial.number).unlink(missing_ok=True)


def _trial_line(trial: FrozenTrial, sweep: SweepParams, finished: int, budget: int) -> str:
    state = trial_state(trial)
    values = list(trial.intermediate_values.values())
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else 0.0
    )
    if state == "complete":
        what = f"complete, val acc {trial.value:.4f} ({len(values)} epochs)"
    elif state == "pruned":
        what = f"pruned at epoch {len(values)}, val acc {max(values, default=0):.4f}"
    elif state == "failed":
        what = f"failed after {len(values)} epochs ({trial.user_attrs['error']}); the sweep goes on"
    else:
        what = state
    try:
        shown = describe(decode_params(sweep, trial.params), sweep)
    except PipelineError:
        shown = ""
    return f"sweep: trial {trial.number} [{finished}/{budget}] {what}, {seconds:.1f}s | {shown}"


def _early_text(sweep: SweepParams, epochs: int) -> str:
    early = sweep.early_terminate
    if early is None:
        return ", no early termination"
    if early.min_iter >= epochs:
        return f", no early termination (min_iter {early.min_iter} >= train.epochs {epochs})"
    return f", hyperband (min_iter {early.min_iter}, eta {early.eta})"


class PerTrialSampler(optuna.samplers.BaseSampler):
    """The random or TPE sampler of ``make_sampler``, made afresh for each trial and seeded with
    ``seed + the trial's number``: trial N draws the same values in any process and any order,
    so workers that start trials at the same moment never draw the same values."""

    def __init__(self, sweep: SweepParams, seed: int) -> None:
        self._sweep, self._seed = sweep, seed
        self._current = make_sampler(sweep, seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current = make_sampler(self._sweep, self._seed, trial.number)
        self._current.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Any,
    ) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_optuna(
    context: SweepContext,
    storage: str,
    *,
    coordinator: bool = True,
    wait_for: float = 3600.0,
) -> optuna.Study:
    """Run trials until ``run_cap`` trials are finished (complete, pruned or failed).

    Finished trials from an earlier run of the same study are kept; trials it left unfinished
    are retried. Every worker sharing the study runs this same loop. The ``coordinator`` (the
    stage) creates the study and, on shared storage, then waits until no trial is running
    (a lost worker's trial is failed by the heartbeat check, and its retry run here); a worker
    (``coordinator=False``) waits up to ``wait_for`` seconds for the study to exist and stops
    once every trial of the budget has been started.
    """
    params, sweep = context.params, context.params.sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = is_shared(storage)
    backend = make_storage(storage, sweep)
    if coordinator:
        study = open_study(params, backend, context.study_name, url=storage)
        retries = recover_interrupted(study, local=not shared)
    else:
        study = wait_for_study(params, backend, context.study_name, storage, wait_for)
        retries = []
    budget = trial_budget(sweep)
    counts = state_counts(study)
    if not coordinator:
        print(
            f"sweep worker {worker_name()}: joined {context.study_name} in {masked(storage)}: "
            f"{_finished(counts)} of {budget} trials finished, {counts['running']} running"
        )
    elif _finished(counts) or retries:
        print(
            f"sweep: resuming {context.study_name} from {masked(storage)}: "
            f"{_finished(counts)} finished trials kept"
            + (f", retrying interrupted trial(s) {', '.join(map(str, retries))}" if retries else "")
        )
    else:
        print(
            f"sweep: study {context.study_name} in {masked(storage)}: {sweep.method}, "
            f"{budget} trials of up to {params.train.epochs} epochs"
            + _early_text(sweep, params.train.epochs)
        )
    objective = make_objective(context, worker=worker_name() if shared else None)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        _keep_best_checkpoint(context, study)
        print(_trial_line(trial, sweep, _finished(state_counts(study)), budget), flush=True)

    grid = make_sampler(sweep, params.seed) if sweep.method == "grid" else None
    study.sampler = grid or PerTrialSampler(sweep, params.seed)
    shown_running = 0
    while True:
        if shared:
            _fail_stale_trials(study)  # a dead worker's trial: failed and queued again
        counts = state_counts(study)
        exhausted = isinstance(grid, optuna.samplers.GridSampler) and grid.is_exhausted(study)
        if _finished(counts) + counts["running"] >= budget or (
            exhausted and not counts["waiting"]  # a queued retry still runs
        ):
            if not (coordinator and shared and counts["running"]):
                break
            if counts["running"] != shown_running:
                print(
                    f"sweep: waiting for {counts['running']} trial(s) running on other workers",
                    flush=True,
                )
                shown_running = counts["running"]
            time.sleep(min(5.0, sweep.heartbeat_interval))
            continue
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=[after_trial], gc_after_trial=True
        )
    return study


def records_from_study(study: optuna.Study, sweep: SweepParams) -> list[TrialRecord]:
    """One record per finished trial of the study (running and queued ones are left out)."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        state = trial_state(trial)
        if state in ("running", "waiting"):
            continue
        seconds = None  # unknown for an interrupted trial: its end is recorded on resume
        if state != "interrupted" and trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        try:
            values = decode_params(sweep, trial.params)
        except PipelineError:  # failed before every value was drawn
            values = dict(trial.params)
        records.append(
            TrialRecord(
                number=trial.number,
                state=state,
                params=values,
                val_acc=[trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
                seconds=seconds,
                best_epoch=trial.user_attrs.get("best_epoch"),
                error=trial.user_attrs.get("error", ""),
                retry_of=retry_of(trial),
            )
        )
    return records


# --------------------------------------------------------------------------------------------
# The W&B engine (needs a login and a W&B server)


def wandb_logged_in() -> bool:
    """Whether W&B has an API key: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        import netrc

        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _Stopped(Exception):
    """W&B's early termination stopped the run (the agent sends SIGTERM)."""


def _config_value(config: Mapping[str, Any], name: str) -> Any:
    """A swept value from a W&B run config: a flat dotted key, or nested sections."""
    if name in config:
        return config[name]
    node: Any = config
    for part in name.split("."):
        node = node[part]
    return node


def wandb_trial(context: SweepContext, record_dir: Path) -> None:
    """One run of ``wandb.agent`` (in the agent's child process): train the run's config with
    ``run_trial``, log each epoch to the run, and leave a record file for the stage to collect.
    """
    import wandb

    sweep = context.params.sweep
    record_dir.mkdir(parents=True, exist_ok=True)
    number = len(list(record_dir.glob("trial_*.json")))
    run = wandb.init(group=context.study_name, name=f"{context.study_name}-trial-{number}")
    record = TrialRecord(number=number, state="failed", params={}, val_acc=[])
    started = time.perf_counter()

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    def report(metrics: EpochMetrics) -> None:
        record.val_acc.append(metrics.val_acc)
        run.log(
            {
                "epoch": metrics.epoch,
                "train/loss": metrics.train_loss,
                "train/acc": metrics.train_acc,
                "val/loss": metrics.val_loss,
                "val/acc": metrics.val_acc,
            }
        )

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        record.params = decode_params(
            sweep, {name: _config_value(run.config, name) for name in sweep.parameters}
        )
        result = run_trial(context, number, record.params, report=report, wandb_logging=False)
        record.state, record.best_epoch = "complete", result.best_epoch
        run.summary["best/val_acc"] = result.best_val_acc
    except _Stopped:
        record.state = "pruned"
    except Exception as error:
        record.error = f"{type(error).__name__}: {error}"[:1000]
    finally:
        signal.signal(signal.SIGTERM, previous)
        record.seconds = time.perf_counter() - started
        (record_dir / f"trial_{number:03d}.json").write_text(json.dumps(record.to_json()))
        run.finish()


def run_wandb(context: SweepContext) -> list[TrialRecord]:
    """Create a W&B sweep from the same config and run ``wandb.agent`` with ``wandb_trial``."""
    if not wandb_logged_in():
        raise PipelineError(
            "sweep.engine: wandb needs a W&B login: run `wandb login` (or set WANDB_API_KEY), "
            "or use sweep.engine: optuna"
        )
    import wandb

    options = context.params.wandb
    sweep = context.params.sweep
    sweep_id = wandb.sweep(
        wandb_sweep_config(sweep, name=context.study_name),
        project=options.project,
        entity=options.entity,
    )
    record_dir = context.work_dir / f"wandb-{sweep_id}"
    print(
        f"sweep: W&B sweep {sweep_id}; more machines join it with "
        f"`python -m naturalist.sweep worker --wandb-sweep {sweep_id}` (or `wandb agent`)",
        flush=True,
    )
    wandb.agent(
        sweep_id,
        function=lambda: wandb_trial(context, record_dir),
        count=trial_budget(sweep),
        project=options.project,
        entity=options.entity,
    )
    return [
        TrialRecord.from_json(json.loads(path.read_text()))
        for path in sorted(record_dir.glob("trial_*.json"))
    ]


# --------------------------------------------------------------------------------------------
# The stage


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so a stopped trial is recorded as interrupted."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class SweepSummary:
    best: TrialRecord
    records: list[TrialRecord]
    study_name: str
    seconds: float


def _ensure_checkpoint(context: SweepContext, best: TrialRecord) -> Path:
    """The best trial's checkpoint; retrained from its params if it is missing (same seed, same
    params: the same weights on the CPU). This is how the best model of a trial that a worker on
    another machine ran reaches the main machine: no shared file system, no copying."""
    path = context.checkpoint(best.number)
    if not path.is_file():
        print(
            f"sweep: checkpoint of trial {best.number} not found here (another worker ran it, "
            "or it was deleted); retraining it from its params"
        )
        run_trial(context, best.number, best.params)
    return path


def run_sweep(
    params: Params,
    *,
    split_dir: Path,
    results_dir: Path,
    model_path: Path,
    sweep_dir: Path = SWEEP_DIR,
    progress: bool = True,
) -> SweepSummary:
    """The sweep stage: run (or resume) the trials, then write every output from their records."""
    started = time.perf_counter()
    context = SweepContext.create(params, split_dir, sweep_dir=sweep_dir, progress=progress)
    sweep = params.sweep
    if sweep.engine == "wandb":
        records = run_wandb(context)
    else:
        study = run_optuna(context, resolve_storage(params, sweep_dir))
        records = records_from_study(study, sweep)
    best = best_record(records)
    with_best: dict[str, Any] = {}
    if best is not None:
        with_best = {
            "best_params": apply_overrides(params, best.params),
            "best_checkpoint": _ensure_checkpoint(context, best),
            "model_path": model_path,
            "trial_dirs": {r.number: context.trial_dir(r.number) / DVCLIVE for r in records},
        }
    write_results(
        records,
        sweep,
        results_dir=results_dir,
        study_name=context.study_name,
        epochs=params.train.epochs,
        **with_best,
    )
    if best is None:
        errors = [r.error for r in records if r.error]
        raise PipelineError(
            f"sweep: none of {len(records)} trials completed"
            + (f" (first error: {errors[0]})" if errors else "")
            + f"; see {results_dir / 'leaderboard.csv'}"
        )
    summary = SweepSummary(best, records, context.study_name, time.perf_counter() - started)
    counts = Counter(r.state for r in records)
    print(
        f"sweep: {len(records)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed"
        + (f", {counts['interrupted']} interrupted and retried" if counts["interrupted"] else "")
        + f"), {sum(r.epochs for r in records)} epochs; best val acc "
        f"{best.best_val_acc:.4f} (trial {best.number}) in {summary.seconds:.0f}s -> {model_path}, "
        f"{results_dir / 'best_params.yaml'}",
    )
    return summary


# --------------------------------------------------------------------------------------------
# The worker: `python -m naturalist.sweep worker` on any machine with the repo and the data


def run_worker(
    params: Params,
    *,
    split_dir: Path,
    sweep_dir: Path = SWEEP_DIR,
    storage: str | None = None,
    wait_for: float = 3600.0,
    progress: bool = True,
) -> list[FrozenTrial]:
    """Take trials from the shared study until every trial of the budget has been started.

    Returns the trials this process ran. Their checkpoints stay on this machine: the stage
    retrains the best one from its params if it was not its own (see ``_ensure_checkpoint``).
    """
    if params.sweep.engine != "optuna":
        raise PipelineError(
            "sweep worker: sweep.engine is wandb: join the W&B sweep with --wandb-sweep <id>"
        )
    url = resolve_storage(params, sweep_dir, storage)
    if not is_shared(url):
        raise PipelineError(
            f"sweep worker: {masked(url)} is a file on this machine; give the shared storage "
            f"(sweep.storage: postgresql://user@host:5432/db, --storage or ${STORAGE_ENV})"
        )
    context = SweepContext.create(params, split_dir, sweep_dir=sweep_dir, progress=progress)
    started, me = time.perf_counter(), worker_name()
    study = run_optuna(context, url, coordinator=False, wait_for=wait_for)
    mine = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("worker") == me and t.state.is_finished()
    ]
    counts = state_counts(study)
    print(
        f"sweep worker {me}: ran {len(mine)} trials in {time.perf_counter() - started:.0f}s; "
        f"the study has {_finished(counts)} of {trial_budget(params.sweep)} finished and "
        f"{counts['running']} running; `dvc repro sweep` on the main machine writes the results"
    )
    return mine


def run_wandb_worker(params: Params, sweep_id: str, *, split_dir: Path, sweep_dir: Path) -> None:
    """Join a W&B sweep the stage created: ``wandb.agent`` runs the same trial function here
    until the W&B server stops handing out runs (run_cap)."""
    if not wandb_logged_in():
        raise PipelineError("sweep worker: --wandb-sweep needs a W&B login (`wandb login`)")
    import wandb

    context = SweepContext.create(params, split_dir, sweep_dir=sweep_dir)
    wandb.agent(
        sweep_id,
        function=lambda: wandb_trial(context, context.work_dir / f"wandb-{sweep_id}"),
        project=params.wandb.project,
        entity=params.wandb.entity,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m naturalist.sweep",
        description="Sweep workers: run trials of the sweep stage's shared study on this machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="take trials from the shared Optuna study (or a W&B sweep) until run_cap",
        description="Run from the repository's root, with the split data pulled (dvc pull split).",
    )
    worker.add_argument(
        "--storage",
        help=f"Optuna storage URL (default: ${STORAGE_ENV}, then sweep.storage in params.yaml)",
    )
    worker.add_argument("--params", type=Path, default=Path("params.yaml"))
    worker.add_argument("--split-dir", type=Path, default=Path("data/split"))
    worker.add_argument("--sweep-dir", type=Path, default=SWEEP_DIR)
    worker.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        help="seconds to wait for `dvc repro sweep` to create the study (default 3600)",
    )
    worker.add_argument(
        "--wandb-sweep", metavar="ID", help="join this W&B sweep (engine wandb) instead"
    )
    worker.add_argument("--no-progress", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    with interrupt_on_sigterm():
        if args.wandb_sweep:
            run_wandb_worker(
                params, args.wandb_sweep, split_dir=args.split_dir, sweep_dir=args.sweep_dir
            )
        else:
            run_worker(
                params,
                split_dir=args.split_dir,
                sweep_dir=args.sweep_dir,
                storage=args.storage,
                wait_for=args.wait,
                progress=not args.no_progress,
            )


if __name__ == "__main__":
    from naturalist.errors import run_stage

    run_stage(main)
