-- API clients and their keys, and the idempotency table of POST /v1/payments.

CREATE TABLE api_clients (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    role       text NOT NULL CHECK (role IN ('client', 'operator')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Keys are random (190 bits) and shown once; only their SHA-256 is stored. A fast hash is
-- enough for keys of that entropy, and lets every request look its key up by hash.
CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    client_id  uuid NOT NULL REFERENCES api_clients (id),
    key_hash   bytea NOT NULL UNIQUE,
    -- The first characters, to tell keys apart in listings without revealing them.
    key_prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- One row per (client, Idempotency-Key): the request's hash, the payment it created and,
-- once the outcome is final, the first response, replayed to every repeat.
CREATE TABLE idempotency_keys (
    client_id       uuid NOT NULL REFERENCES api_clients (id),
    idempotency_key text NOT NULL,
    request_hash    bytea NOT NULL,
    payment_id      uuid REFERENCES payments (id),
    -- While set and in the future, a request is working on this key (409 to others).
    locked_until    timestamptz,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, idempotency_key)
);

-- Analysts read payments on the replicas, never key hashes or stored responses (which
-- hold client secrets).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        REVOKE ALL ON api_keys, idempotency_keys FROM analyst;
    END IF;
END
$$;
