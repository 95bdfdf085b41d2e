-- Every change an ingest made to a stored price, newest first: the ticker and day, the column,
-- the value before and after, the source that sent the new value, and the ingest run that
-- applied it (with when it started and how it ended). A blank cell never replaces a stored
-- value, so every change here is a real value replacing another (or filling a NULL).
-- Add `WHERE r.ticker = '600519.SH'` to follow one ticker.
-- Runs unchanged on SQLite and PostgreSQL; no parameters.
SELECT r.ticker,
       r.trade_date,
       r.column_name,
       r.old_value,
       r.new_value,
       r.source,
       r.revised_at,
       r.run_id,
       i.started_at AS run_started_at,
       i.status AS run_status
FROM revisions r
JOIN ingest_runs i ON i.run_id = r.run_id
ORDER BY r.revised_at DESC, r.ticker, r.trade_date, r.column_name
