-- Grams and money avoidable per lever (priority order, every lever listed), each course counted once under its first lever
CREATE OR REPLACE MACRO lever_summary(date_from, date_to, facility_name, cost_per_gram) AS TABLE
WITH per_lever AS (
    SELECT lever, CAST(COUNT(*) AS BIGINT) AS courses, SUM(grams_avoidable) AS grams
    FROM course_outcomes(date_from, date_to, facility_name) WHERE lever IS NOT NULL GROUP BY lever
)
SELECT l.lever, l.lever_rank, l.label AS lever_label, l.meaning,
       COALESCE(p.courses, 0) AS courses,
       round(COALESCE(p.grams, 0.0), 1) AS grams_avoidable,
       round(COALESCE(p.grams, 0.0) * cost_per_gram, 0) AS money_avoidable
FROM ref_levers AS l LEFT JOIN per_lever AS p USING (lever)
ORDER BY l.lever_rank;
