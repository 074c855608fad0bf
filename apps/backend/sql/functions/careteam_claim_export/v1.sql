-- careteam_claim_export v1: the oldest queued bulk export of any organization, claimed
-- for this process: marked running, its attempt counted, its heartbeat set; nothing when
-- none is queued. Concurrent claimers never take the same job (SKIP LOCKED). SECURITY
-- DEFINER: the runner picks work across organizations, which row-level security keeps
-- the application role from seeing; it returns only the job's organization and id, and
-- the export itself then runs under that organization's tenant.
-- Called by: ExportRunner (src/services/bulk_export.py, CLAIM), in careteam serve.
-- Installed by: revision 20261207_bulk_export.
CREATE FUNCTION public.careteam_claim_export()
RETURNS TABLE (organization_id uuid, id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE public.export_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, heartbeat_at = now(),
        started_at = now()
    FROM (
        SELECT q.organization_id, q.id FROM public.export_jobs AS q
        WHERE q.status = 'queued'
        ORDER BY q.created_at, q.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS next
    WHERE j.organization_id = next.organization_id AND j.id = next.id
    RETURNING j.organization_id, j.id
$$;
