-- A usage record's identity is the gateway's own request id (unique per request); the
-- X-Request-Id a client sends is kept beside it for correlation, not unique: clients may reuse
-- one, and one organisation's ids must never suppress another's records.
ALTER TABLE usage_records
    ADD COLUMN client_request_id text CHECK (length(client_request_id) <= 200);

CREATE INDEX usage_records_client_request_id_idx
    ON usage_records (organisation_id, client_request_id)
    WHERE client_request_id IS NOT NULL;
