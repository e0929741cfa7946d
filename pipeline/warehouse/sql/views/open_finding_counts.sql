-- Open findings per rule and severity, of courses starting within [date_from, date_to] at a facility (findings of no course count in every period unless a facility is asked)
CREATE OR REPLACE MACRO open_finding_counts(date_from, date_to, facility_name) AS TABLE
SELECT rule_id, any_value(rule_title) AS rule_title, category, any_value(category_label) AS category_label,
       severity, MIN(severity_rank) AS severity_rank,
       CAST(COUNT(*) AS BIGINT) AS findings, CAST(COUNT(DISTINCT course_id) AS BIGINT) AS courses,
       round(COALESCE(SUM(excess_g), 0.0), 1) AS excess_g
FROM v_open_findings
WHERE (course_start IS NULL AND facility_name IS NULL)
   OR (course_start IS NOT NULL
       AND (date_from IS NULL OR course_start >= CAST(date_from AS DATE))
       AND (date_to IS NULL OR course_start <= CAST(date_to AS DATE))
       AND (facility_name IS NULL OR facility = facility_name))
GROUP BY rule_id, category, severity ORDER BY findings DESC, rule_id;
