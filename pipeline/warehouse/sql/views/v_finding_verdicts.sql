-- Every finding with its review verdict: whether it makes its course inappropriate as flagged and after review
CREATE OR REPLACE VIEW v_finding_verdicts AS
WITH latest_review AS (
    SELECT finding_id, arg_max(reason_code, event_id) AS reason_code, MAX(reviewed_at) AS reviewed_at
    FROM review_events GROUP BY finding_id
)
SELECT f.finding_id, f.rule_id, COALESCE(r.title, f.rule_id) AS rule_title, f.category,
       COALESCE(vc.label, f.category) AS category_label, f.severity, COALESCE(vs.value_rank, 99) AS severity_rank,
       f.status, l.reason_code, d.label AS reason_label, l.reviewed_at,
       f.patient_id, f.course_id, f.excess_g, r.lever, lv.lever_rank,
       f.resolved_run IS NULL AS current,
       COALESCE(f.status = 'dismissed' AND d.clears_finding, false) AS cleared_by_review,
       f.resolved_run IS NULL AND f.counts_against_course AS against_course_flagged,
       f.resolved_run IS NULL AND f.counts_against_course
           AND NOT COALESCE(f.status = 'dismissed' AND d.clears_finding, false) AS against_course_after_review
FROM findings AS f
LEFT JOIN latest_review AS l USING (finding_id)
LEFT JOIN ref_dispositions AS d ON d.reason_code = l.reason_code
LEFT JOIN ref_rules AS r ON r.rule_id = f.rule_id
LEFT JOIN ref_levers AS lv ON lv.lever = r.lever
LEFT JOIN ref_vocabulary AS vc ON vc.vocabulary = 'category' AND vc.value = f.category
LEFT JOIN ref_vocabulary AS vs ON vs.vocabulary = 'severity' AND vs.value = f.severity;
