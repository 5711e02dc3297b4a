-- Issue 16: an API instance remembers the keys it has checked on the primary, so most
-- requests cost no key lookup. What makes that safe is this notice: every change to a key
-- or a client (a revocation, a role changed, a row deleted) is announced on the
-- `api_keys_changed` channel when it commits, and each instance forgets what it heard of.
-- The payload names the key by its hash (hex); an empty payload (a client changed, a table
-- truncated) means "forget every key". An instance that is not listening remembers
-- nothing (api/src/auth.rs).
CREATE FUNCTION api_keys_announce_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- An IF, not a CASE: `OLD.key_hash` is resolved only where it exists.
    IF TG_TABLE_NAME = 'api_keys' AND TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('api_keys_changed', encode(OLD.key_hash, 'hex'));
    ELSE
        PERFORM pg_notify('api_keys_changed', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_change
    AFTER UPDATE OR DELETE ON api_keys FOR EACH ROW EXECUTE FUNCTION api_keys_announce_change();
CREATE TRIGGER api_keys_announce_truncate
    AFTER TRUNCATE ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION api_keys_announce_change();
CREATE TRIGGER api_clients_announce_change
    AFTER UPDATE OR DELETE ON api_clients FOR EACH ROW EXECUTE FUNCTION api_keys_announce_change();
CREATE TRIGGER api_clients_announce_truncate
    AFTER TRUNCATE ON api_clients FOR EACH STATEMENT EXECUTE FUNCTION api_keys_announce_change();
