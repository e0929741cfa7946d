-- Per finding category: the courses starting in a period with a finding of that category counting against them as flagged, and how many are appropriate after review
CREATE OR REPLACE MACRO category_summary(date_from, date_to, facility_name) AS TABLE
SELECT v.category AS group_key, any_value(v.category_label) AS group_label,
       CAST(COUNT(DISTINCT o.course_id) AS BIGINT) AS courses,
       CAST(COUNT(DISTINCT o.course_id) FILTER (WHERE o.appropriate_flagged) AS BIGINT) AS appropriate_flagged,
       CAST(COUNT(DISTINCT o.course_id) FILTER (WHERE o.appropriate_after_review) AS BIGINT) AS appropriate_after_review
FROM course_outcomes(date_from, date_to, facility_name) AS o
JOIN v_finding_verdicts AS v ON v.course_id = o.course_id AND v.against_course_flagged
GROUP BY v.category ORDER BY v.category;
