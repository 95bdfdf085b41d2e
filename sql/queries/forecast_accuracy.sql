-- Accuracy of the stored forecasts per horizon, against the realized closes (forecast_errors).
-- rmse_ratio < 1 beats naive persistence (tomorrow = today's close); directional_accuracy is,
-- among the n_directional forecasts that move off the as_of close, the share whose direction
-- matches the realized one (NULL when every forecast equals persistence);
-- coverage is the share of closes inside the interval; interval_score is the Winkler score of the
-- 80% band (width plus 2/0.2 times any miss), in percent of the as_of close (lower is better). `forecasting evaluate` prints the same
-- numbers per ticker as well. Add e.g. WHERE as_of_date >= '2018-01-01' to restrict the range.
-- These are the live lineage's forecasts; for a backfill's, read forecast_errors_all and add
-- WHERE lineage = 'backfill:...' (`forecasting evaluate --lineage ...` prints the same).
-- SQLite needs its math functions for SQRT (3.35+, built into Python's sqlite3).
SELECT horizon,
       COUNT(*) AS n,
       SQRT(AVG(error * error)) AS rmse,
       AVG(ABS(error)) AS mae,
       AVG(ABS(error) / actual) * 100.0 AS mape,
       SQRT(AVG(naive_error * naive_error)) AS naive_rmse,
       SQRT(AVG(error * error)) / NULLIF(SQRT(AVG(naive_error * naive_error)), 0) AS rmse_ratio,
       AVG(CASE
               WHEN ABS(yhat - base_close) <= 1e-9 * ABS(base_close) THEN NULL
               WHEN (yhat - base_close) * (actual - base_close) > 0 THEN 1.0
               ELSE 0.0
           END) AS directional_accuracy,
       SUM(CASE WHEN ABS(yhat - base_close) > 1e-9 * ABS(base_close) THEN 1 ELSE 0 END)
           AS n_directional,
       AVG(covered * 1.0) AS coverage,
       AVG(yhat_upper - yhat_lower) AS mean_width,
       AVG((yhat_upper - yhat_lower) * 100.0 / base_close) AS mean_width_pct,
       AVG(((yhat_upper - yhat_lower)
            + 10.0 * (CASE WHEN actual < yhat_lower THEN yhat_lower - actual ELSE 0 END
                      + CASE WHEN actual > yhat_upper THEN actual - yhat_upper ELSE 0 END))
           * 100.0 / base_close) AS interval_score
FROM forecast_errors
GROUP BY horizon
ORDER BY horizon
