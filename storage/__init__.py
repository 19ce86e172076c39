"""PostgreSQL, Redis and the embedded servers behind them."""
