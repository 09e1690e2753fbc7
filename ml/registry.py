"""Model registry: the ML tables, artifacts with checksums, and champion/challenger promotion.

Tables (created idempotently by `ensure_ml_tables`, on duckdb and postgres):

- `water_infrastructure.ml_models`: one row per trained model. Status moves
  created -> validated -> active -> retired. At most one active model per type is enforced by
  the database on both engines: `active_model_type` equals model_type exactly when the status
  is active (CHECK constraints) and is UNIQUE (NULLs do not collide), so a second active model
  of a type is a constraint violation. PostgreSQL also has the partial unique index
  `ml_models_one_active_per_type ... where status = 'active'` (DuckDB has no partial indexes).
- `water_infrastructure.model_performance`: daily evaluation (see ml.evaluation).
- `ml.anomaly_detections`: ML anomalies in the anomalies contract columns.
- `ml.leakage_estimates`: daily leakage estimates per district.
- `ml.flow_forecasts` (postgres only): forecasts the `ml_predictions_cache` SQL model publishes.
  `water_infrastructure.ml_predictions_cache` itself is a dbt model on every engine.

Artifacts are joblib files under `load_settings().artifacts_dir` (env WATER_ARTIFACTS_DIR),
at `<model_type>/<model_id>.joblib`; the registry stores that relative path and the file's
sha256, and `load_artifact` refuses a file whose checksum differs before unpickling it.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from flows.kernel.jsonable import jsonable
from flows.kernel.settings import load_settings
from flows.kernel.warehouse import Warehouse
from ml.config import MODEL_TYPES, MLConfig
from ml.metrics import paired_difference

STATUSES = ("created", "validated", "active", "retired")

_COMMON_DDL = [
    "create schema if not exists water_infrastructure",
    "create schema if not exists ml",
    f"""create table if not exists water_infrastructure.ml_models (
        model_id varchar primary key,
        model_type varchar not null check (model_type in ({", ".join(repr(t) for t in MODEL_TYPES)})),
        version integer not null,
        status varchar not null check (status in ({", ".join(repr(s) for s in STATUSES)})),
        active_model_type varchar unique,
        algorithm varchar not null,
        metrics text,
        champion_metrics text,
        primary_metric varchar,
        training_start timestamptz,
        training_end timestamptz,
        holdout_start timestamptz,
        holdout_end timestamptz,
        training_rows bigint,
        artifact_path varchar not null,
        artifact_sha256 varchar not null,
        created_at timestamptz not null,
        validated_at timestamptz,
        activated_at timestamptz,
        retired_at timestamptz,
        reason text,
        promotion_evidence text,
        unique (model_type, version),
        check ((status = 'active') = (active_model_type is not null)),
        check (active_model_type is null or active_model_type = model_type)
    )""",
    """create table if not exists water_infrastructure.model_performance (
        model_id varchar not null,
        model_type varchar not null,
        evaluation_date date not null,
        n_predictions integer not null,
        rmse double precision,
        mae double precision,
        mape double precision,
        mase double precision,
        interval_coverage double precision,
        drift_score double precision,
        mean_horizon_hours double precision,
        mase_day_ahead double precision,
        interval_coverage_day_ahead double precision,
        details text,
        evaluated_at timestamptz not null,
        primary key (model_id, evaluation_date)
    )""",
    """create table if not exists ml.anomaly_detections (
        anomaly_id varchar primary key,
        node_id varchar not null,
        district varchar,
        window_start timestamptz not null,
        detected_at timestamptz not null,
        anomaly_type varchar not null,
        severity varchar not null check (severity in ('info', 'warning', 'critical')),
        measurement_type varchar,
        actual_value double precision,
        expected_value double precision,
        deviation_percentage double precision,
        detection_method varchar not null,
        details text
    )""",
    """create table if not exists ml.leakage_estimates (
        model_id varchar not null,
        district varchar not null,
        estimate_date date not null,
        water_loss_ls_estimated double precision not null,
        water_loss_m3_estimated double precision not null,
        water_loss_percent_estimated double precision,
        system_input_ls_baseline double precision,
        minimum_night_flow_ls double precision,
        night_loss_ls double precision,
        previous_day_loss_ls double precision,
        created_at timestamptz not null,
        primary key (model_id, district, estimate_date)
    )""",
]

_POSTGRES_DDL = [
    """create unique index if not exists ml_models_one_active_per_type
        on water_infrastructure.ml_models (model_type) where status = 'active'""",
    """create table if not exists ml.flow_forecasts (
        prediction_id varchar not null,
        model_id varchar not null,
        node_id varchar not null,
        prediction_timestamp timestamptz not null,
        target_timestamp timestamptz not null,
        horizon_hours integer not null,
        predicted_flow_rate double precision not null,
        flow_rate_lower double precision not null,
        flow_rate_upper double precision not null,
        confidence_score double precision not null,
        created_at timestamptz not null,
        primary key (model_id, node_id, target_timestamp)
    )""",
    "create index if not exists flow_forecasts_created_at_idx on ml.flow_forecasts (created_at)",
]


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown model, wrong status...)."""


class ArtifactIntegrityError(RegistryError):
    """An artifact is missing or its bytes differ from the checksum in the registry."""


# Columns renamed to the seed's names (issue 16): tables created before keep their rows.
_RENAMED_COLUMNS = (
    ("ml", "flow_forecasts", "flow_rate_predicted", "predicted_flow_rate"),
    ("ml", "flow_forecasts", "confidence", "confidence_score"),
    ("water_infrastructure", "ml_predictions_cache", "flow_rate_predicted", "predicted_flow_rate"),
    ("water_infrastructure", "ml_predictions_cache", "confidence", "confidence_score"),
)


def ensure_ml_tables(wh: Warehouse) -> None:
    """Create the ML tables if missing (idempotent); safe before any data exists."""
    for ddl in _COMMON_DDL + (_POSTGRES_DDL if wh.type == "postgres" else []):
        wh.execute(ddl)
    # Added by issue 16 (registries created before lack it).
    for table, column in (
        ("ml_models", "promotion_evidence text"),
        ("model_performance", "mase_day_ahead double precision"),
        ("model_performance", "interval_coverage_day_ahead double precision"),
    ):
        wh.execute(f"alter table water_infrastructure.{table} add column if not exists {column}")
    for schema, table, old, new in _RENAMED_COLUMNS:
        found = wh.scalar(
            "select count(*) from information_schema.columns where table_schema = %(s)s"
            " and table_name = %(t)s and column_name = %(c)s",
            {"s": schema, "t": table, "c": old},
        )
        if found:
            wh.execute(f"alter table {schema}.{table} rename column {old} to {new}")


# -- artifacts ------------------------------------------------------------------------


def artifacts_dir() -> Path:
    return load_settings().artifacts_dir


def save_artifact(
    obj: Any, model_type: str, model_id: str, root: Path | None = None
) -> tuple[str, str]:
    """Write `obj` with joblib; returns (path relative to the artifacts dir, sha256)."""
    root = root or artifacts_dir()
    relative = f"{model_type}/{model_id}.joblib"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".joblib.partial")
    joblib.dump(obj, partial, compress=3)
    partial.replace(path)
    return relative, file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_artifact(relative_path: str, expected_sha256: str, root: Path | None = None) -> Path:
    """The artifact's path if its bytes match the registry's sha256; else a clear error."""
    root = root or artifacts_dir()
    path = root / relative_path
    if not path.is_file():
        raise ArtifactIntegrityError(
            f"model artifact {path} is missing (artifacts dir {root}; set WATER_ARTIFACTS_DIR)"
        )
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {path} has sha256 {actual[:12]}..., the registry expects "
            f"{expected_sha256[:12]}...: refusing to load a changed file"
        )
    return path


def load_artifact(relative_path: str, expected_sha256: str, root: Path | None = None) -> Any:
    """Load an artifact, verifying its sha256 first (a changed file is never unpickled)."""
    return joblib.load(verify_artifact(relative_path, expected_sha256, root))


def load_model(record: dict[str, Any], root: Path | None = None) -> Any:
    return load_artifact(record["artifact_path"], record["artifact_sha256"], root)


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionRule:
    """How a model type is judged: its skill metric, the gates a first model must pass, and
    whether its intervals must stay calibrated (nominal coverage) for it to replace another."""

    primary_metric: str
    higher_is_better: bool
    gates: tuple[tuple[str, str, float], ...]  # (metric, "<" | ">=" ..., threshold)
    nominal_coverage: float | None = None  # interval models: calibration is judged too


@dataclass(frozen=True)
class HoldoutLosses:
    """One model's per-row losses on the held-out rows (the same rows, in the same order, for
    the challenger and the champion), for the paired comparison.

    - blocks: the unit of the paired test (a node's day, a node, a district): rows of one
      block are correlated and count as one observation in the standard error;
    - skill: lower is better (absolute error; for the anomaly model each injected fault's
      rank loss, whose mean is 1 - AUC: a loss has no ceiling a champion can sit on);
    - interval / covered: interval score and whether the actual fell inside (interval models).
    """

    blocks: np.ndarray
    skill: np.ndarray
    interval: np.ndarray | None = None
    covered: np.ndarray | None = None


def promotion_rules(config: MLConfig) -> dict[str, PromotionRule]:
    return {
        "flow_forecast": PromotionRule(
            "mase",
            False,
            (
                ("mase", "<", config.max_forecast_mase),
                ("interval_coverage", ">=", config.min_interval_coverage),
            ),
            nominal_coverage=config.interval_coverage,
        ),
        "anomaly": PromotionRule(
            "perturbation_auc", True, (("perturbation_auc", ">=", config.min_anomaly_auc),)
        ),
        "leakage": PromotionRule("mae", False, (("mase", "<", config.max_leakage_mase),)),
    }


@dataclass(frozen=True)
class Decision:
    validated: bool
    promote: bool
    reason: str
    # What the decision rests on (paired differences, standard errors, coverage errors):
    # stored with the model (ml_models.promotion_evidence).
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)


def _check(value: float, op: str, threshold: float) -> bool:
    return {
        "<": value < threshold,
        "<=": value <= threshold,
        ">": value > threshold,
        ">=": value >= threshold,
    }[op]


def decide_promotion(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    rule: PromotionRule,
    config: MLConfig,
    challenger_losses: HoldoutLosses | None = None,
    champion_losses: HoldoutLosses | None = None,
) -> Decision:
    """Champion/challenger on the same held-out rows.

    Without a champion, the challenger is activated when it passes the rule's gates (absolute
    quality: beats seasonal-naive / persistence, keeps its interval). With a champion the gates
    do not apply - a hard week (a public holiday) makes every model look bad, and the better
    one must still be able to replace the worse - and the challenger is activated only if:

    - skill: its mean loss is lower on the paired rows by at least `promotion_margin`
      (relative) and by `promotion_z` standard errors (block-robust), so a noise-sized gain on
      a small holdout is not a win;
    - calibration (interval models): its coverage error |coverage - nominal| is no larger than
      the champion's (or within `promotion_z` standard errors of nominal), and its interval
      score is not significantly worse: narrower intervals that miss more cannot win.
    """
    name = rule.primary_metric
    value = challenger.get(name)
    if value is None or not math.isfinite(value):
        return Decision(False, False, f"failed validation: {name} is missing or not finite")
    if champion is None:
        for metric, op, threshold in rule.gates:
            observed = challenger.get(metric)
            if (
                observed is None
                or not math.isfinite(observed)
                or not _check(observed, op, threshold)
            ):
                return Decision(
                    False,
                    False,
                    f"failed validation: {metric} {_fmt(observed)} is not {op} {threshold:g}",
                )
        return Decision(True, True, f"no active model; {name} {_fmt(value)} passes the gates")
    best = champion.get(name)
    if best is None or not math.isfinite(best):
        return Decision(
            True, True, f"champion has no finite {name} on this window; challenger {_fmt(value)}"
        )
    if challenger_losses is None or champion_losses is None:
        return Decision(True, False, "no paired held-out losses: the champion stays")
    z, margin = config.promotion_z, config.promotion_margin
    ch, cp = challenger_losses, champion_losses
    diff, se, blocks = paired_difference(ch.skill, cp.skill, ch.blocks)
    base = float(np.nanmean(cp.skill))
    relative = diff / base if base > 0 else (-math.inf if diff < 0 else 0.0)
    t = diff / se if se and math.isfinite(se) and se > 0 else (-math.inf if diff < 0 else 0.0)
    evidence: dict[str, Any] = {
        "rows": int(np.isfinite(ch.skill - cp.skill).sum()),
        "blocks": blocks,
        "champion_mean_loss": base,
        "loss_difference": diff,
        "loss_difference_se": se,
        "t": t,
        "relative_change": relative,
        "z": z,
        "margin": margin,
    }
    skill_wins = diff < 0 and t <= -z and -relative >= margin
    skill_text = (
        f"{name} {_fmt(value)} vs champion {_fmt(best)}; paired loss change {relative:+.1%}"
        f" ({t:+.1f} SE over {blocks} blocks; needs <= -{margin:.0%} and <= -{z:g} SE)"
    )
    calibration_ok, calibration_text = True, ""
    if rule.nominal_coverage is not None and ch.covered is not None and cp.covered is not None:
        nominal = rule.nominal_coverage
        cov_ch, cov_cp = float(np.nanmean(ch.covered)), float(np.nanmean(cp.covered))
        _, se_cov, _ = paired_difference(
            ch.covered.astype(float), np.full(len(ch.covered), nominal), ch.blocks
        )
        err_ch, err_cp = abs(cov_ch - nominal), abs(cov_cp - nominal)
        tolerance = z * se_cov if math.isfinite(se_cov) else 0.0
        is_diff, is_se, _ = paired_difference(ch.interval, cp.interval, ch.blocks)
        is_t = is_diff / is_se if is_se and math.isfinite(is_se) and is_se > 0 else 0.0
        coverage_ok = err_ch <= max(err_cp, tolerance)
        score_ok = is_t < z
        calibration_ok = coverage_ok and score_ok
        evidence |= {
            "coverage": cov_ch,
            "champion_coverage": cov_cp,
            "coverage_tolerance": tolerance,
            "interval_score_difference": is_diff,
            "interval_score_t": is_t,
        }
        calibration_text = (
            f"; coverage {cov_ch:.3f} vs champion {cov_cp:.3f} (nominal {nominal:g},"
            f" tolerance {tolerance:.3f}), interval score {is_t:+.1f} SE"
        )
    promote = skill_wins and calibration_ok
    if promote:
        verdict = "promoted"
    elif not skill_wins:
        verdict = "champion stays: skill gain not significant"
    else:
        verdict = "champion stays: worse calibrated"
    evidence["verdict"] = verdict
    return Decision(True, promote, f"{verdict}: {skill_text}{calibration_text}", evidence)


def _fmt(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.4g}"


def new_model_id(model_type: str, version: int) -> str:
    return f"{model_type}-v{version}-{uuid.uuid4().hex[:8]}"


def next_version(wh: Warehouse, model_type: str) -> int:
    current = wh.scalar(
        "select max(version) from water_infrastructure.ml_models where model_type = %(t)s",
        {"t": model_type},
    )
    return int(current or 0) + 1


def register_model(
    wh: Warehouse,
    *,
    model_id: str,
    model_type: str,
    version: int,
    algorithm: str,
    artifact_path: str,
    artifact_sha256: str,
    training_start: datetime | None,
    training_end: datetime | None,
    holdout_start: datetime | None,
    holdout_end: datetime | None,
    training_rows: int,
) -> None:
    """Insert a new model with status created."""
    if model_type not in MODEL_TYPES:
        raise RegistryError(
            f"unknown model_type {model_type!r}: expected one of {', '.join(MODEL_TYPES)}"
        )
    wh.execute(
        """insert into water_infrastructure.ml_models (
            model_id, model_type, version, status, active_model_type, algorithm,
            training_start, training_end, holdout_start, holdout_end, training_rows,
            artifact_path, artifact_sha256, created_at, reason)
        values (%(model_id)s, %(model_type)s, %(version)s, 'created', null, %(algorithm)s,
            %(training_start)s, %(training_end)s, %(holdout_start)s, %(holdout_end)s,
            %(training_rows)s, %(artifact_path)s, %(artifact_sha256)s, %(now)s,
            'trained; awaiting validation')""",
        {
            "model_id": model_id,
            "model_type": model_type,
            "version": version,
            "algorithm": algorithm,
            "training_start": training_start,
            "training_end": training_end,
            "holdout_start": holdout_start,
            "holdout_end": holdout_end,
            "training_rows": int(training_rows),
            "artifact_path": artifact_path,
            "artifact_sha256": artifact_sha256,
            "now": datetime.now(UTC),
        },
    )


def record_decision(
    wh: Warehouse,
    model_id: str,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    primary_metric: str,
    decision: Decision,
) -> None:
    """Store the holdout metrics and the decision; activate (retiring the champion) if promoted.

    Retiring and activating happen in one transaction, so readers never see zero or two
    active models of a type."""
    now = datetime.now(UTC)
    params = {
        "model_id": model_id,
        "metrics": json.dumps(jsonable(metrics), sort_keys=True),
        "champion": json.dumps(jsonable(champion_metrics), sort_keys=True)
        if champion_metrics
        else None,
        "primary": primary_metric,
        "reason": decision.reason,
        "evidence": json.dumps(jsonable(decision.evidence), sort_keys=True)
        if decision.evidence
        else None,
        "now": now,
    }
    with wh.transaction():
        record = get_model(wh, model_id)
        if record is None:
            raise RegistryError(f"model {model_id} is not in the registry")
        if record["status"] != "created":
            raise RegistryError(f"model {model_id} is {record['status']}, not created")
        wh.execute(
            """update water_infrastructure.ml_models
            set metrics = %(metrics)s, champion_metrics = %(champion)s, primary_metric = %(primary)s,
                reason = %(reason)s, promotion_evidence = %(evidence)s,
                status = case when %(validated)s then 'validated' else status end,
                validated_at = case when %(validated)s then %(now)s else validated_at end
            where model_id = %(model_id)s""",
            {**params, "validated": decision.validated},
        )
        if decision.promote:
            _activate(wh, record["model_type"], model_id, now, decision.reason)


def activate_model(wh: Warehouse, model_id: str, reason: str) -> None:
    """Make a validated (or retired) model the active one of its type, e.g. for a rollback."""
    with wh.transaction():
        record = get_model(wh, model_id)
        if record is None:
            raise RegistryError(f"model {model_id} is not in the registry")
        if record["status"] not in ("validated", "retired", "active"):
            raise RegistryError(
                f"model {model_id} is {record['status']}: only validated models can be activated"
            )
        if record["status"] != "active":
            _activate(wh, record["model_type"], model_id, datetime.now(UTC), reason)


def _activate(wh: Warehouse, model_type: str, model_id: str, now: datetime, reason: str) -> None:
    wh.execute(
        """update water_infrastructure.ml_models
        set status = 'retired', active_model_type = null, retired_at = %(now)s,
            reason = %(why)s
        where model_type = %(t)s and status = 'active'""",
        {"t": model_type, "now": now, "why": f"replaced by {model_id}"},
    )
    wh.execute(
        """update water_infrastructure.ml_models
        set status = 'active', active_model_type = model_type, activated_at = %(now)s,
            retired_at = null, reason = %(reason)s
        where model_id = %(model_id)s""",
        {"model_id": model_id, "now": now, "reason": reason},
    )


_RECORD_COLUMNS = (
    "model_id, model_type, version, status, algorithm, metrics, champion_metrics, primary_metric,"
    " training_start, training_end, holdout_start, holdout_end, training_rows, artifact_path,"
    " artifact_sha256, created_at, validated_at, activated_at, retired_at, reason,"
    " promotion_evidence"
)


def _records(wh: Warehouse, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    names = [c.strip() for c in _RECORD_COLUMNS.split(",")]
    rows = wh.query(
        f"select {_RECORD_COLUMNS} from water_infrastructure.ml_models where {where}"  # noqa: S608 - fixed clauses
        " order by model_type, version",
        params,
    )
    records = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        for key in ("metrics", "champion_metrics", "promotion_evidence"):
            record[key] = json.loads(record[key]) if record[key] else None
        records.append(record)
    return records


def get_model(wh: Warehouse, model_id: str) -> dict[str, Any] | None:
    found = _records(wh, "model_id = %(id)s", {"id": model_id})
    return found[0] if found else None


def active_model(wh: Warehouse, model_type: str) -> dict[str, Any] | None:
    found = _records(wh, "model_type = %(t)s and status = 'active'", {"t": model_type})
    return found[0] if found else None


def list_models(wh: Warehouse) -> list[dict[str, Any]]:
    return _records(wh, "1 = 1", {})
