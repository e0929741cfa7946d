-- One row per course with the audit's verdict as flagged and after review, its grams and its lever
CREATE OR REPLACE VIEW v_course_outcomes AS
WITH per_course AS (
    SELECT course_id,
           bool_or(against_course_after_review) AS inappropriate_after_review,
           arg_min(lever, lever_rank) FILTER (WHERE current AND lever IS NOT NULL AND NOT cleared_by_review AND excess_g > 0) AS lever,
           MAX(excess_g) FILTER (WHERE current AND lever IS NOT NULL AND NOT cleared_by_review) AS grams_avoidable,
           CAST(COUNT(*) FILTER (WHERE current AND status = 'open' AND severity = 'critical') AS BIGINT) AS open_critical,
           CAST(COUNT(*) FILTER (WHERE current AND status = 'open' AND severity = 'warning') AS BIGINT) AS open_warning,
           CAST(COUNT(*) FILTER (WHERE current AND status = 'open' AND severity = 'info') AS BIGINT) AS open_info,
           string_agg(DISTINCT category_label, ', ' ORDER BY category_label) FILTER (WHERE against_course_flagged) AS categories
    FROM v_finding_verdicts WHERE course_id IS NOT NULL GROUP BY course_id
)
SELECT c.course_id, c.patient_id, c.facility, c.service, c.prescriber_id, c.indication,
       COALESCE(i.label, c.indication, 'missing') AS indication_label,
       c.course_number, c.start, CAST(c.start AS DATE) AS start_date,
       CAST(date_trunc('month', c.start) AS DATE) AS month, c."end", c.n_days, c.total_g, c.dosing_weight_kg,
       c.weight_basis, c.g_per_kg, c.interval_days,
       c.appropriate AS appropriate_flagged,
       NOT COALESCE(p.inappropriate_after_review, false) AS appropriate_after_review,
       c.excess_g AS grams_avoidable_flagged,
       COALESCE(p.grams_avoidable, 0.0) AS grams_avoidable,
       p.lever, lv.label AS lever_label,
       COALESCE(p.open_critical, 0) AS open_critical, COALESCE(p.open_warning, 0) AS open_warning,
       COALESCE(p.open_info, 0) AS open_info, p.categories
FROM courses AS c
LEFT JOIN per_course AS p USING (course_id)
LEFT JOIN ref_indications AS i ON i.indication = c.indication
LEFT JOIN ref_levers AS lv ON lv.lever = p.lever;
