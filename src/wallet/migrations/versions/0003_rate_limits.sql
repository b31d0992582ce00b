-- A request rate per API key; NULL means the service's default (WALLET_RATE_LIMIT_PER_S).
ALTER TABLE api_keys ADD COLUMN rate_limit_per_s integer CHECK (rate_limit_per_s BETWEEN 1 AND 1000000);
