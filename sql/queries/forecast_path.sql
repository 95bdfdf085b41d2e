-- One ticker's forecast path from one as_of date: every horizon with its target trading
-- day, the interval, and the realized close where it is known yet (NULL before).
--
-- Parameters: ticker (e.g. '600000.SH') and as_of (e.g. '2018-12-28'), the two named
-- placeholders in the WHERE clause below. To pass them:
--   psql:    psql -v ticker="'600000.SH'" -v as_of="'2018-12-28'" -f sql/queries/forecast_path.sql
--   sqlite3: `.parameter set` each name, colon included, to a quoted value, then `.read` this file
--   Python:  conn.execute(text(sql), {"ticker": "600000.SH", "as_of": date(2018, 12, 28)})
-- (No colon-names in these comments: SQLAlchemy would take them for placeholders.)
-- The live lineage's path; for a backfill's, read latest_forecasts_all and add
-- AND f.lineage = 'backfill:...' to the WHERE clause.
SELECT f.lineage,
       f.horizon,
       f.target_date,
       f.base_close,
       f.yhat,
       f.yhat_lower,
       f.yhat_upper,
       p.close AS actual,
       f.model_version_id,
       f.calendar_source
FROM latest_forecasts f
LEFT JOIN prices p ON p.ticker = f.ticker AND p.trade_date = f.target_date
WHERE f.ticker = :ticker
  AND f.as_of_date = :as_of
ORDER BY f.horizon
