-- Providers, their credentials, models, deployments, MCP servers and the grants of keys to
-- models and MCP servers (SPEC §4, §5, §6, §8).

CREATE TYPE provider_type AS ENUM ('OPENAI', 'ANTHROPIC', 'GOOGLE', 'AZURE_OPENAI', 'VLLM', 'CUSTOM');
CREATE TYPE provider_key_status AS ENUM ('ACTIVE', 'REVOKED');
CREATE TYPE model_type AS ENUM (
    'chat', 'reasoning', 'image', 'embeddings', 'audio', 'moderation', 'transcription', 'tts'
);
CREATE TYPE mcp_transport AS ENUM ('STREAMABLE_HTTP', 'SSE', 'STDIO');
CREATE TYPE mcp_auth_type AS ENUM ('NONE', 'BEARER', 'BASIC', 'OAUTH2');

CREATE TABLE providers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(btrim(name)) > 0),
    provider_type   provider_type NOT NULL,
    base_url        text NOT NULL CHECK (base_url ~ '^https?://'),
    timeout_ms      integer NOT NULL DEFAULT 60000 CHECK (timeout_ms > 0),
    enabled         boolean NOT NULL DEFAULT true,
    -- Extra upstream headers: {"Header-Name": "value"}.
    extra_headers   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra_headers) = 'object'),
    -- Type-specific options, e.g. {"api_version": "2024-10-21"} for AZURE_OPENAI.
    options         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- One provider of each type per organisation.
    CONSTRAINT providers_organisation_type_key UNIQUE (organisation_id, provider_type),
    CONSTRAINT providers_organisation_name_key UNIQUE (organisation_id, name),
    UNIQUE (organisation_id, id)
);
CREATE TRIGGER providers_touch BEFORE UPDATE ON providers
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE provider_api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    provider_id     uuid NOT NULL,
    name            text NOT NULL DEFAULT 'default',
    -- ChaCha20-Poly1305 envelope under a master key (SPEC §6):
    -- {"v": 1, "alg": "chacha20poly1305", "key_id": "...", "nonce": "<b64>", "ciphertext": "<b64>"}.
    envelope        jsonb NOT NULL CHECK (
        jsonb_typeof(envelope) = 'object'
        AND envelope ?& ARRAY['v', 'alg', 'key_id', 'nonce', 'ciphertext']
    ),
    -- Display form of the secret (e.g. "sk-...9f2c"); never enough to authenticate.
    preview         text NOT NULL DEFAULT '',
    status          provider_key_status NOT NULL DEFAULT 'ACTIVE',
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    rotated_at      timestamptz,
    CHECK ((status = 'REVOKED') = (revoked_at IS NOT NULL)),
    UNIQUE (provider_id, id),
    FOREIGN KEY (organisation_id, provider_id) REFERENCES providers (organisation_id, id) ON DELETE CASCADE
);
CREATE INDEX provider_api_keys_provider_idx ON provider_api_keys (provider_id);
CREATE INDEX provider_api_keys_envelope_key_idx ON provider_api_keys ((envelope ->> 'key_id'));
CREATE TRIGGER provider_api_keys_touch BEFORE UPDATE ON provider_api_keys
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE models (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id     uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    -- Client-facing name (unique per organisation) and upstream id; two names may share a slug.
    name                text NOT NULL CHECK (length(name) > 0),
    slug                text NOT NULL CHECK (length(slug) > 0),
    model_type          model_type NOT NULL DEFAULT 'chat',
    description         text,
    provider_id         uuid NOT NULL,
    -- NULL: use the provider's only active key.
    provider_api_key_id uuid,
    capabilities        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(capabilities) = 'object'),
    -- Prices in nanos-USD per 1M tokens. NULL cached/reasoning prices mean "same as input/output".
    input_price_nanos        bigint NOT NULL DEFAULT 0 CHECK (input_price_nanos >= 0),
    output_price_nanos       bigint NOT NULL DEFAULT 0 CHECK (output_price_nanos >= 0),
    cached_input_price_nanos bigint CHECK (cached_input_price_nanos >= 0),
    reasoning_price_nanos    bigint CHECK (reasoning_price_nanos >= 0),
    -- Nanos-USD per generated image, and per unit for unit-priced models (audio seconds,
    -- characters, requests: the unit is named in `capabilities.pricing_unit`).
    image_price_nanos        bigint NOT NULL DEFAULT 0 CHECK (image_price_nanos >= 0),
    unit_price_nanos         bigint NOT NULL DEFAULT 0 CHECK (unit_price_nanos >= 0),
    policies            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(policies) = 'object'),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_organisation_name_key UNIQUE (organisation_id, name),
    UNIQUE (organisation_id, id),
    -- A provider (or key) still used by a model cannot be deleted; deleting the organisation
    -- removes everything at once.
    FOREIGN KEY (organisation_id, provider_id) REFERENCES providers (organisation_id, id),
    FOREIGN KEY (provider_id, provider_api_key_id) REFERENCES provider_api_keys (provider_id, id)
);
CREATE INDEX models_provider_idx ON models (provider_id);
CREATE INDEX models_provider_api_key_idx ON models (provider_api_key_id)
    WHERE provider_api_key_id IS NOT NULL;
CREATE TRIGGER models_touch BEFORE UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

-- Extra upstream targets of a model (SPEC §5). A model with no deployment is served by its
-- own provider/slug/key.
CREATE TABLE model_deployments (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id     uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    model_id            uuid NOT NULL,
    provider_id         uuid NOT NULL,
    provider_api_key_id uuid,
    slug                text NOT NULL CHECK (length(slug) > 0),
    weight              integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
    -- Lower runs first for failover/priority routing.
    priority            integer NOT NULL DEFAULT 0 CHECK (priority >= 0),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (organisation_id, model_id) REFERENCES models (organisation_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organisation_id, provider_id) REFERENCES providers (organisation_id, id),
    FOREIGN KEY (provider_id, provider_api_key_id) REFERENCES provider_api_keys (provider_id, id)
);
CREATE INDEX model_deployments_model_idx ON model_deployments (model_id, priority);
CREATE INDEX model_deployments_provider_idx ON model_deployments (provider_id);
CREATE INDEX model_deployments_provider_api_key_idx ON model_deployments (provider_api_key_id)
    WHERE provider_api_key_id IS NOT NULL;
CREATE TRIGGER model_deployments_touch BEFORE UPDATE ON model_deployments
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE api_key_model_access (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    api_key_id      uuid NOT NULL,
    model_id        uuid NOT NULL,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_key_model_access_key UNIQUE (api_key_id, model_id),
    FOREIGN KEY (organisation_id, api_key_id) REFERENCES api_keys (organisation_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organisation_id, model_id) REFERENCES models (organisation_id, id) ON DELETE CASCADE
);
CREATE INDEX api_key_model_access_model_idx ON api_key_model_access (model_id);

CREATE TABLE mcp_servers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(btrim(name)) > 0),
    -- Addressable as /v1/mcp/{slug}; must not look like a uuid so that ids stay unambiguous.
    slug            text NOT NULL CHECK (
        slug ~ '^[a-z0-9][a-z0-9_.-]*$'
        AND slug !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    ),
    description     text,
    transport       mcp_transport NOT NULL,
    -- STREAMABLE_HTTP and SSE need a URL; STDIO needs a command.
    url             text CHECK (url ~ '^https?://'),
    command         text,
    args            text[] NOT NULL DEFAULT '{}',
    -- Environment of a STDIO server: {"NAME": "value"}; secret values are stored as
    -- encrypted envelopes ({"v", "alg", "key_id", "nonce", "ciphertext"}) instead of strings.
    env             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(env) = 'object'),
    auth_type       mcp_auth_type NOT NULL DEFAULT 'NONE',
    -- Upstream auth settings; secrets (token, password, client_secret) as encrypted envelopes.
    auth_config     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(auth_config) = 'object'),
    timeout_ms      integer NOT NULL DEFAULT 60000 CHECK (timeout_ms > 0),
    -- Guardrails (SPEC §8): allowed_tools is a whitelist when non-empty.
    allowed_tools   text[] NOT NULL DEFAULT '{}',
    blocked_tools   text[] NOT NULL DEFAULT '{}',
    -- Keywords that block a tools/call request when found in it.
    keywords        text[] NOT NULL DEFAULT '{}',
    -- Pricing in nanos-USD: per call, plus per request (input) and response (output) byte.
    price_per_call_nanos        bigint NOT NULL DEFAULT 0 CHECK (price_per_call_nanos >= 0),
    price_per_input_byte_nanos  bigint NOT NULL DEFAULT 0 CHECK (price_per_input_byte_nanos >= 0),
    price_per_output_byte_nanos bigint NOT NULL DEFAULT 0 CHECK (price_per_output_byte_nanos >= 0),
    policies        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(policies) = 'object'),
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mcp_servers_organisation_slug_key UNIQUE (organisation_id, slug),
    UNIQUE (organisation_id, id),
    CONSTRAINT mcp_servers_transport_check CHECK (
        (transport = 'STDIO' AND command IS NOT NULL AND length(command) > 0)
        OR (transport <> 'STDIO' AND url IS NOT NULL)
    )
);
CREATE TRIGGER mcp_servers_touch BEFORE UPDATE ON mcp_servers
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE api_key_mcp_access (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    api_key_id      uuid NOT NULL,
    mcp_server_id   uuid NOT NULL,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_key_mcp_access_key UNIQUE (api_key_id, mcp_server_id),
    FOREIGN KEY (organisation_id, api_key_id) REFERENCES api_keys (organisation_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organisation_id, mcp_server_id) REFERENCES mcp_servers (organisation_id, id) ON DELETE CASCADE
);
CREATE INDEX api_key_mcp_access_server_idx ON api_key_mcp_access (mcp_server_id);
