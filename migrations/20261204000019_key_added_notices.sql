-- Issue 16: a new key is announced too, on the same channel as changes (0015), as
-- `added:<hash hex>`. An API instance lets two lookups of keys it does not know run at a
-- time and makes the others wait (the flood guard of invariant I5); a key it has heard
-- being added skips that line on its first use, as the active keys it loaded at start do.
-- A client given a key and bursting at once would otherwise meet 429s.
-- An instance of an earlier release reads the payload as no hash it knows and forgets
-- every key it remembered: a lookup more per key, never a key trusted wrongly.
CREATE OR REPLACE FUNCTION api_keys_announce_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- IFs, not a CASE: `OLD.key_hash` and `NEW.key_hash` are resolved only where they exist.
    IF TG_TABLE_NAME = 'api_keys' AND TG_LEVEL = 'ROW' AND TG_OP = 'INSERT' THEN
        PERFORM pg_notify('api_keys_changed', 'added:' || encode(NEW.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'api_keys' AND TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('api_keys_changed', encode(OLD.key_hash, 'hex'));
    ELSE
        PERFORM pg_notify('api_keys_changed', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_insert
    AFTER INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION api_keys_announce_change();
