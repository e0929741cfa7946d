-- The appropriateness metrics of a set of courses, grouped by a dimension; the one definition every report, view and command reads
CREATE OR REPLACE MACRO course_summary(dimension, date_from, date_to, facility_name) AS TABLE
WITH keyed AS (
    SELECT *,
           CASE dimension
               WHEN 'indication' THEN COALESCE(indication, 'missing')
               WHEN 'service' THEN COALESCE(service, '(not recorded)')
               WHEN 'prescriber' THEN COALESCE(prescriber_id, '(not recorded)')
               WHEN 'facility' THEN COALESCE(facility, '(not recorded)')
               WHEN 'month' THEN strftime(month, '%Y-%m')
               ELSE 'all' END AS group_key,
           CASE dimension
               WHEN 'indication' THEN indication_label
               WHEN 'service' THEN COALESCE(service, '(not recorded)')
               WHEN 'prescriber' THEN COALESCE(prescriber_id, '(not recorded)')
               WHEN 'facility' THEN COALESCE(facility, '(not recorded)')
               WHEN 'month' THEN strftime(month, '%b %Y')
               ELSE 'All courses' END AS group_label
    FROM course_outcomes(date_from, date_to, facility_name)
)
SELECT group_key, any_value(group_label) AS group_label,
       CAST(COUNT(*) AS BIGINT) AS courses,
       CAST(COUNT(DISTINCT patient_id) AS BIGINT) AS patients,
       CAST(COUNT(*) FILTER (WHERE appropriate_flagged) AS BIGINT) AS appropriate_flagged,
       round(100.0 * COUNT(*) FILTER (WHERE appropriate_flagged) / COUNT(*), 1) AS pct_appropriate_flagged,
       CAST(COUNT(*) FILTER (WHERE appropriate_after_review) AS BIGINT) AS appropriate_after_review,
       round(100.0 * COUNT(*) FILTER (WHERE appropriate_after_review) / COUNT(*), 1) AS pct_appropriate_after_review,
       round(SUM(total_g), 1) AS grams_used,
       round(SUM(grams_avoidable_flagged), 1) AS grams_avoidable_flagged,
       round(SUM(grams_avoidable), 1) AS grams_avoidable,
       CAST(COUNT(*) FILTER (WHERE grams_avoidable > 0) AS BIGINT) AS courses_with_grams_avoidable,
       CAST(SUM(open_critical) AS BIGINT) AS open_critical,
       CAST(SUM(open_warning) AS BIGINT) AS open_warning,
       CAST(SUM(open_info) AS BIGINT) AS open_info,
       CAST(MIN(start_date) AS DATE) AS first_start, CAST(MAX(start_date) AS DATE) AS last_start
FROM keyed GROUP BY group_key ORDER BY courses DESC, group_key;
