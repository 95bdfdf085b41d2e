"""Data: the schema and database, the trading calendar, prices, price sources and the ingest."""
