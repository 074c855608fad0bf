-- careteam_expire_exports v1: finished bulk exports (completed or failed) whose files
-- have expired are deleted; returns each one's organization and id, so that the runner
-- removes its files. SECURITY DEFINER: the runner expires every organization's jobs.
-- Called by: ExportRunner (src/services/bulk_export.py, EXPIRE), in careteam serve,
-- periodically.
-- Installed by: revision 20261207_bulk_export.
CREATE FUNCTION public.careteam_expire_exports()
RETURNS TABLE (organization_id uuid, id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM public.export_jobs AS j
    WHERE j.status IN ('completed', 'failed') AND j.expires_at <= now()
    RETURNING j.organization_id, j.id
$$;
