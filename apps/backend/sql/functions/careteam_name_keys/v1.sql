-- careteam_name_keys v1: keeps first_name_key and last_name_key (the names in lower
-- case, which name searches use: lower() is not leakproof, so under row-level security
-- an index on it would not serve them) on every insert and every change of a name.
-- Called by: trigger careteam_name_keys (BEFORE INSERT OR UPDATE OF first_name,
-- last_name), on patients and on providers.
-- Installed by: revision 20261206_records_and_sync.
CREATE OR REPLACE FUNCTION careteam_name_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.first_name_key := lower(NEW.first_name);
    NEW.last_name_key := lower(NEW.last_name);
    RETURN NEW;
END
$$;
