-- Open, unresolved findings with their course figures, critical first, then by course start
CREATE OR REPLACE VIEW v_open_findings AS
SELECT f.finding_id, f.severity, f.category, f.rule_id, f.rule_version, f.status,
       f.patient_id, f.course_id, f.order_ids, f.indication, f.message, f.expected,
       f.observed, f.action, f.excess_g, f.first_seen_run, f.last_seen_run,
       c.start, c.total_g, c.g_per_kg, c.dosing_weight_kg, c.service, c.prescriber_id
FROM findings AS f LEFT JOIN courses AS c ON c.course_id = f.course_id
WHERE f.status = 'open' AND f.resolved_run IS NULL
ORDER BY CASE f.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'info' THEN 2 ELSE 3 END,
         c.start NULLS LAST, f.finding_id;
