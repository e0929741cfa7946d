-- Excess grams of open findings per category; the 'all (max per course)' row counts each course once (its largest excess)
CREATE OR REPLACE VIEW v_grams_avoidable AS
WITH open_findings AS (
    SELECT *, COALESCE(course_id, 'finding:' || finding_id) AS course_key
    FROM findings WHERE status = 'open' AND resolved_run IS NULL
),
per_category AS (
    SELECT category, CAST(COUNT(*) AS BIGINT) AS findings,
           CAST(COUNT(DISTINCT course_id) AS BIGINT) AS courses,
           CAST(SUM(excess_g) AS DOUBLE) AS excess_g, 0 AS sort_key
    FROM open_findings GROUP BY category
),
per_course AS (
    SELECT course_key, MAX(course_id) AS course_id, COUNT(*) AS findings,
           MAX(excess_g) AS excess_g
    FROM open_findings GROUP BY course_key
),
total AS (
    SELECT 'all (max per course)' AS category,
           CAST(COALESCE(SUM(findings), 0) AS BIGINT) AS findings,
           CAST(COUNT(DISTINCT course_id) AS BIGINT) AS courses,
           CAST(COALESCE(SUM(excess_g), 0) AS DOUBLE) AS excess_g, 1 AS sort_key
    FROM per_course
)
SELECT category, findings, courses, excess_g FROM (
    SELECT * FROM per_category UNION ALL SELECT * FROM total
) ORDER BY sort_key, excess_g DESC, category;
