-- Every refit (fine-tune or full retrain) the daily runs and backfills decided, oldest first:
-- why (the trigger that fired and its threshold, the check's ratio to naive and its RMSE
-- against the model's own validation RMSE, the model's age, how many errors were scored, and
-- the reason in words), what it
-- produced (the new version, its kind and training cutoff), whether it became active, and
-- what it cost (training seconds). lineage is NULL for `forecasting train` runs.
-- Drop the WHERE clause to see every check, the keeps included.
-- Runs unchanged on SQLite and PostgreSQL; no parameters.
SELECT c.as_of_date,
       r.lineage,
       c.scope,
       c.decision,
       c.triggered_by,
       c.threshold,
       c.ratio,
       c.rmse,
       c.baseline_rmse,
       c.model_age_days,
       c.n_scored,
       c.reason,
       c.model_version_id AS version_before,
       c.new_version_id,
       v.kind AS new_kind,
       v.trained_through,
       v.val_rmse,
       v.val_naive_rmse,
       c.promoted,
       c.train_seconds
FROM model_checks c
LEFT JOIN model_versions v ON v.id = c.new_version_id
LEFT JOIN pipeline_runs r ON r.run_id = c.run_id
WHERE c.decision <> 'keep'
ORDER BY c.as_of_date, c.scope, c.id
