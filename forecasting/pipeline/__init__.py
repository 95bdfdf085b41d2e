"""A day's run: scopes, the drift check and retrain policy, refits, forecasts, their store, run records, backfills."""
