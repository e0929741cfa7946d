-- Every unresolved finding, whatever its review status, with its rule's title and its course; worklist_rank orders critical first, then the newest course
CREATE OR REPLACE VIEW v_unresolved_findings AS
SELECT f.finding_id, f.severity, f.category, COALESCE(vc.label, f.category) AS category_label,
       f.rule_id, COALESCE(r.title, f.rule_id) AS rule_title, f.rule_version, f.status,
       f.patient_id, f.course_id, f.order_ids, f.indication,
       COALESCE(i.label, f.indication, 'missing') AS indication_label,
       f.message, f.expected, f.observed, f.action, f.excess_g, f.first_seen_run, f.last_seen_run, f.changed_since_review,
       c.start, CAST(c.start AS DATE) AS course_start, c."end" AS course_end, c.total_g, c.g_per_kg,
       c.dosing_weight_kg, c.facility, c.service, c.prescriber_id,
       COALESCE(vs.value_rank, 99) AS severity_rank,
       row_number() OVER (ORDER BY COALESCE(vs.value_rank, 99), c.start DESC NULLS LAST, f.finding_id) AS worklist_rank
FROM findings AS f
LEFT JOIN courses AS c ON c.course_id = f.course_id
LEFT JOIN ref_rules AS r ON r.rule_id = f.rule_id
LEFT JOIN ref_indications AS i ON i.indication = f.indication
LEFT JOIN ref_vocabulary AS vc ON vc.vocabulary = 'category' AND vc.value = f.category
LEFT JOIN ref_vocabulary AS vs ON vs.vocabulary = 'severity' AND vs.value = f.severity
WHERE f.resolved_run IS NULL
ORDER BY worklist_rank;
