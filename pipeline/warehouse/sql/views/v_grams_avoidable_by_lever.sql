-- Grams (and cost at the latest run's cost per gram) avoidable per lever (pipeline/rules/levers.py); each course counts once, in its first lever: indication > repeat > weight_basis > over_dose > rounding
CREATE OR REPLACE VIEW v_grams_avoidable_by_lever AS
WITH lever_findings AS (
    SELECT course_id, excess_g, CASE WHEN starts_with(rule_id, 'indication.') THEN 0 WHEN rule_id = 'repeat_justification.repeat_without_justification' THEN 1 WHEN starts_with(rule_id, 'weight_basis.') THEN 2 WHEN rule_id = 'course_dose.above_target' THEN 3 WHEN rule_id = 'course_dose.rounding_opportunity' THEN 4 END AS lever_rank, CASE WHEN starts_with(rule_id, 'indication.') THEN 'indication' WHEN rule_id = 'repeat_justification.repeat_without_justification' THEN 'repeat' WHEN starts_with(rule_id, 'weight_basis.') THEN 'weight_basis' WHEN rule_id = 'course_dose.above_target' THEN 'over_dose' WHEN rule_id = 'course_dose.rounding_opportunity' THEN 'rounding' END AS lever
    FROM findings
    WHERE resolved_run IS NULL AND status <> 'dismissed' AND course_id IS NOT NULL AND excess_g > 0
),
per_course AS (
    SELECT course_id, arg_min(lever, lever_rank) AS lever, MAX(excess_g) AS excess_g
    FROM lever_findings WHERE lever IS NOT NULL GROUP BY course_id
),
cost AS (SELECT cost_per_gram FROM runs WHERE cost_per_gram IS NOT NULL ORDER BY started_at DESC LIMIT 1)
SELECT lever, CAST(COUNT(*) AS BIGINT) AS courses, CAST(SUM(excess_g) AS DOUBLE) AS grams_avoidable,
       CAST(SUM(excess_g) * (SELECT cost_per_gram FROM cost) AS DOUBLE) AS cost_avoidable
FROM per_course GROUP BY lever ORDER BY grams_avoidable DESC;
