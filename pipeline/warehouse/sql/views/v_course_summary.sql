-- One row per course with its unresolved findings counted by severity and the categories concerned
CREATE OR REPLACE VIEW v_course_summary AS
SELECT c.course_id, c.patient_id, c.facility, c.service, c.prescriber_id, c.indication,
       c.course_number, c.start, c."end", c.n_days, c.total_g, c.dosing_weight_kg, c.weight_basis,
       c.g_per_kg, c.interval_days, c.appropriate, c.excess_g,
       CAST(COUNT(f.finding_id) AS BIGINT) AS findings,
       CAST(COUNT(f.finding_id) FILTER (WHERE f.severity = 'critical') AS BIGINT) AS critical_findings,
       CAST(COUNT(f.finding_id) FILTER (WHERE f.severity = 'warning') AS BIGINT) AS warning_findings,
       string_agg(DISTINCT f.category, ', ' ORDER BY f.category) AS categories
FROM courses AS c
LEFT JOIN findings AS f ON f.course_id = c.course_id AND f.resolved_run IS NULL
GROUP BY ALL ORDER BY c.start, c.course_id;
