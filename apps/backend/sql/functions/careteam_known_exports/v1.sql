-- careteam_known_exports v1: which of these ids are bulk export jobs still on record,
-- in any organization: the runner removes the files of any other (left behind when the
-- process stopped between deleting a job and removing its files). SECURITY DEFINER: the
-- files of every organization share one store.
-- Called by: ExportRunner (src/services/bulk_export.py, KNOWN), in careteam serve, at
-- start.
-- Installed by: revision 20261207_bulk_export.
CREATE FUNCTION public.careteam_known_exports(p_ids uuid[])
RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j.id FROM public.export_jobs AS j WHERE j.id = ANY (p_ids)
$$;
