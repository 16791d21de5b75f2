-- Usage: one record per request, one per MCP call, and aggregate rollups (SPEC §8, §10).
--
-- Usage rows are historical facts: they keep the ids and names they were written with and
-- have no foreign keys, so that deleting a key or a model never loses billing history and a
-- batch insert never fails because a row it mentions was deleted meanwhile.

CREATE TYPE usage_granularity AS ENUM ('HOUR', 'DAY', 'MONTH');

CREATE TABLE usage_records (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- X-Request-Id (client-supplied or generated); the batch writer inserts with
    -- ON CONFLICT (request_id) DO NOTHING so a retried batch never duplicates.
    request_id          text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 200),
    organisation_id     uuid,
    team_id             uuid,
    user_id             uuid,
    api_key_id          uuid,
    method              text NOT NULL DEFAULT 'POST',
    endpoint            text NOT NULL,
    -- Provider name and type, Wharf model name, upstream slug, as resolved.
    provider            text,
    provider_type       text,
    provider_id         uuid,
    model               text,
    model_id            uuid,
    upstream_model      text,
    stream              boolean NOT NULL DEFAULT false,
    -- HTTP status sent to the client (0 when nothing could be sent).
    status              smallint NOT NULL CHECK (status >= 0),
    -- success, error, upstream_error, client_disconnected, blocked, ...
    outcome             text NOT NULL,
    error_code          text,
    -- Which gate denied the request (auth, limits, budget, quota, filter, safety, ...).
    denied_by           text,
    latency_ms          double precision NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    ttfb_ms             double precision CHECK (ttfb_ms >= 0),
    -- Time spent in Wharf itself.
    overhead_us         bigint NOT NULL DEFAULT 0 CHECK (overhead_us >= 0),
    -- Token buckets (SPEC §4). Input includes cached input; output includes reasoning.
    input_tokens        bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens       bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cached_input_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_input_tokens >= 0),
    cache_write_tokens  bigint NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    reasoning_tokens    bigint NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    total_tokens        bigint NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    embedding_tokens    bigint NOT NULL DEFAULT 0 CHECK (embedding_tokens >= 0),
    image_count         integer NOT NULL DEFAULT 0 CHECK (image_count >= 0),
    -- Per-modality counts where the provider reports them: {"input": {"text": 10, "audio": 4}, ...}.
    modality_tokens     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(modality_tokens) = 'object'),
    -- Where the counts came from.
    usage_source        text NOT NULL DEFAULT 'none' CHECK (usage_source IN ('none', 'provider', 'estimated')),
    cost_nanos          bigint NOT NULL DEFAULT 0 CHECK (cost_nanos >= 0),
    -- The prices the cost was computed with (nanos-USD per 1M tokens, per image, per unit).
    pricing             jsonb,
    -- Routing attempts: [{"provider", "model", "outcome", "error_class", "status", "latency_ms"}].
    attempts            jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(attempts) = 'array'),
    -- Filter and SafetySec decisions: [{"filter", "phase", "action", "code", "score", ...}].
    filter_decisions    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(filter_decisions) = 'array'),
    safety_decisions    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(safety_decisions) = 'array'),
    provider_request_id text,
    -- The upstream stream ended before its normal end.
    stream_cut          boolean NOT NULL DEFAULT false,
    client_disconnected boolean NOT NULL DEFAULT false,
    request_bytes       bigint NOT NULL DEFAULT 0 CHECK (request_bytes >= 0),
    response_bytes      bigint NOT NULL DEFAULT 0 CHECK (response_bytes >= 0),
    trace_id            text,
    -- When the request started.
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_records_request_id_key UNIQUE (request_id)
);
CREATE INDEX usage_records_org_created_idx ON usage_records (organisation_id, created_at);
CREATE INDEX usage_records_key_created_idx ON usage_records (api_key_id, created_at);
CREATE INDEX usage_records_team_created_idx ON usage_records (team_id, created_at)
    WHERE team_id IS NOT NULL;
CREATE INDEX usage_records_created_brin ON usage_records USING brin (created_at);

-- One row per MCP JSON-RPC call, linked to the usage record of the HTTP request that carried
-- it by request_id (a batch request has several calls: call_index 0, 1, ...).
CREATE TABLE mcp_usage_records (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id      text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 200),
    call_index      integer NOT NULL DEFAULT 0 CHECK (call_index >= 0),
    organisation_id uuid,
    team_id         uuid,
    user_id         uuid,
    api_key_id      uuid,
    mcp_server_id   uuid,
    server_slug     text,
    transport       mcp_transport,
    -- JSON-RPC method (tools/call, tools/list, ...) and the tool for tools/call.
    method          text,
    tool            text,
    session_id      text,
    status          smallint NOT NULL CHECK (status >= 0),
    outcome         text NOT NULL,
    error_code      text,
    latency_ms      double precision NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    bytes_in        bigint NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
    bytes_out       bigint NOT NULL DEFAULT 0 CHECK (bytes_out >= 0),
    cost_nanos      bigint NOT NULL DEFAULT 0 CHECK (cost_nanos >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mcp_usage_records_request_call_key UNIQUE (request_id, call_index)
);
CREATE INDEX mcp_usage_records_org_created_idx ON mcp_usage_records (organisation_id, created_at);
CREATE INDEX mcp_usage_records_server_created_idx ON mcp_usage_records (mcp_server_id, created_at);
CREATE INDEX mcp_usage_records_key_created_idx ON mcp_usage_records (api_key_id, created_at);

-- Aggregates by period bucket and dimensions. NULL dimensions mean "none" (e.g. a key with
-- no team); `dims_key` folds them into one comparable value so that writers can upsert with
--   INSERT ... ON CONFLICT (granularity, bucket_start, dims_key) DO UPDATE SET
--       requests = usage_rollups.requests + EXCLUDED.requests, ...
CREATE TABLE usage_rollups (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    granularity         usage_granularity NOT NULL,
    -- Start of the bucket in UTC (date_trunc of created_at at the granularity).
    bucket_start        timestamptz NOT NULL,
    organisation_id     uuid,
    team_id             uuid,
    user_id             uuid,
    api_key_id          uuid,
    -- Wharf model name and provider name.
    model               text,
    provider            text,
    dims_key            text GENERATED ALWAYS AS (
        coalesce(organisation_id::text, '') || '|' || coalesce(team_id::text, '') || '|'
        || coalesce(user_id::text, '') || '|' || coalesce(api_key_id::text, '') || '|'
        || coalesce(model, '') || '|' || coalesce(provider, '')
    ) STORED,
    requests            bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    errors              bigint NOT NULL DEFAULT 0 CHECK (errors >= 0),
    input_tokens        bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens       bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cached_input_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_input_tokens >= 0),
    reasoning_tokens    bigint NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    cost_nanos          bigint NOT NULL DEFAULT 0 CHECK (cost_nanos >= 0),
    latency_ms_sum      double precision NOT NULL DEFAULT 0 CHECK (latency_ms_sum >= 0),
    ttfb_ms_sum         double precision NOT NULL DEFAULT 0 CHECK (ttfb_ms_sum >= 0),
    mcp_calls           bigint NOT NULL DEFAULT 0 CHECK (mcp_calls >= 0),
    mcp_cost_nanos      bigint NOT NULL DEFAULT 0 CHECK (mcp_cost_nanos >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_rollups_bucket_dims_key UNIQUE (granularity, bucket_start, dims_key)
);
CREATE INDEX usage_rollups_org_bucket_idx ON usage_rollups (organisation_id, granularity, bucket_start);
CREATE INDEX usage_rollups_key_bucket_idx ON usage_rollups (api_key_id, granularity, bucket_start)
    WHERE api_key_id IS NOT NULL;
CREATE INDEX usage_rollups_team_bucket_idx ON usage_rollups (team_id, granularity, bucket_start)
    WHERE team_id IS NOT NULL;
CREATE TRIGGER usage_rollups_touch BEFORE UPDATE ON usage_rollups
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();
