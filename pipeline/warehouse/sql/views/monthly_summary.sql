-- course_summary per month of course start at a facility (NULL: every one), every month from the first to the last, partial months marked
CREATE OR REPLACE MACRO monthly_summary(facility_name) AS TABLE
WITH bounds AS (SELECT data_from, data_through FROM v_data_through),
months AS (
    SELECT CAST(m AS DATE) AS month
    FROM bounds, generate_series(CAST(date_trunc('month', data_from) AS DATE), CAST(date_trunc('month', data_through) AS DATE), INTERVAL 1 MONTH) AS g(m)
    WHERE data_from IS NOT NULL AND data_through IS NOT NULL
)
SELECT m.month, strftime(m.month, '%b %Y') AS month_label,
       COALESCE(s.courses, 0) AS courses,
       s.pct_appropriate_flagged, s.pct_appropriate_after_review,
       COALESCE(s.grams_used, 0.0) AS grams_used,
       COALESCE(s.grams_avoidable, 0.0) AS grams_avoidable,
       (m.month < CAST(date_trunc('month', b.data_from) AS DATE) + INTERVAL 1 MONTH AND day(b.data_from) > 1)
           OR b.data_through < CAST(m.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE) AS partial,
       GREATEST(m.month, b.data_from) AS covered_from,
       LEAST(CAST(m.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE), b.data_through) AS covered_to
FROM months AS m CROSS JOIN bounds AS b
LEFT JOIN course_summary('month', NULL, NULL, facility_name) AS s ON s.group_key = strftime(m.month, '%Y-%m')
ORDER BY m.month;
