-- The worklist: every open, unresolved finding (v_unresolved_findings with status open), critical first, then newest course first
CREATE OR REPLACE VIEW v_open_findings AS
SELECT * FROM v_unresolved_findings WHERE status = 'open' ORDER BY worklist_rank;
