-- The newest next-trading-day forecast of every ticker: one row per ticker, from its most
-- recent as_of_date, as users see it (latest_forecasts keeps the newest row per ticker,
-- as_of_date and horizon of the live lineage). For the whole multi-day path of one ticker see
-- forecast_path.sql. To read a backfill's (or a restricted run's) forecasts instead, use
-- latest_forecasts_all, which holds every lineage, and keep one lineage in both places:
--   FROM latest_forecasts_all f ... FROM latest_forecasts_all WHERE lineage = 'backfill:...'
--   ... WHERE f.horizon = 1 AND f.lineage = 'backfill:...'
-- (`SELECT DISTINCT lineage FROM pipeline_runs` lists them.)
-- Runs unchanged on SQLite and PostgreSQL; no parameters.
SELECT f.lineage,
       f.ticker,
       f.as_of_date,
       f.target_date,
       f.base_close,
       f.yhat,
       f.yhat_lower,
       f.yhat_upper,
       f.model_version_id,
       f.calendar_source
FROM latest_forecasts f
JOIN (
    SELECT ticker, MAX(as_of_date) AS as_of_date
    FROM latest_forecasts
    GROUP BY ticker
) newest ON newest.ticker = f.ticker AND newest.as_of_date = f.as_of_date
WHERE f.horizon = 1
ORDER BY f.ticker
