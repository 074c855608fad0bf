-- careteam_recover_exports v1: running bulk exports whose runner stopped (its heartbeat
-- is older than p_stale: the process was killed or lost the database) are queued again
-- to start over, or, after p_max_attempts attempts, marked failed with p_error (an
-- OperationOutcome) in their error list. Returns each such job with what became of it
-- ('queued' or 'failed'), so that the runner removes the files of the attempt.
-- SECURITY DEFINER: the runner watches every organization's jobs.
-- Called by: ExportRunner (src/services/bulk_export.py, RECOVER), in careteam serve, at
-- start and then periodically.
-- Installed by: revision 20261207_bulk_export.
CREATE FUNCTION public.careteam_recover_exports(
    p_stale interval, p_max_attempts integer, p_error jsonb)
RETURNS TABLE (organization_id uuid, id uuid, status text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE public.export_jobs AS j
    SET status = CASE WHEN j.attempts >= p_max_attempts THEN 'failed' ELSE 'queued' END,
        error = CASE WHEN j.attempts >= p_max_attempts THEN jsonb_build_array(p_error)
                     ELSE j.error END,
        finished_at = CASE WHEN j.attempts >= p_max_attempts THEN now() END,
        expires_at = CASE WHEN j.attempts >= p_max_attempts
                          THEN now() + (j.expires_after_s * interval '1 second') END,
        heartbeat_at = NULL
    WHERE j.status = 'running' AND j.heartbeat_at < now() - p_stale
    RETURNING j.organization_id, j.id, j.status
$$;
