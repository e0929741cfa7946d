-- Per finding category: findings, reviewed, actioned, dismissed, share actioned, median days from first sighting to first decision
CREATE OR REPLACE VIEW v_review_yield AS
WITH latest AS (
    SELECT e.finding_id, arg_max(e.status, e.event_id) AS status,
           arg_max(e.reason_code, e.event_id) AS reason_code, MIN(e.reviewed_at) AS first_decision_at
    FROM review_events AS e GROUP BY e.finding_id
),
decided AS (
    SELECT f.category, f.severity, l.status, l.reason_code,
           date_diff('hour', r.started_at, l.first_decision_at) / 24.0 AS days_to_decision
    FROM findings AS f
    JOIN latest AS l USING (finding_id)
    LEFT JOIN runs AS r ON r.run_id = f.first_seen_run
),
totals AS (SELECT category, CAST(COUNT(*) AS BIGINT) AS findings FROM findings GROUP BY category)
SELECT t.category, t.findings,
       CAST(COUNT(d.status) AS BIGINT) AS reviewed,
       CAST(COUNT(*) FILTER (WHERE d.status = 'actioned') AS BIGINT) AS actioned,
       CAST(COUNT(*) FILTER (WHERE d.status = 'dismissed') AS BIGINT) AS dismissed,
       CAST(100.0 * COUNT(*) FILTER (WHERE d.status = 'actioned') / NULLIF(COUNT(d.status), 0) AS DOUBLE) AS pct_actioned_of_reviewed,
       CAST(median(d.days_to_decision) AS DOUBLE) AS median_days_to_decision
FROM totals AS t LEFT JOIN decided AS d USING (category)
GROUP BY t.category, t.findings ORDER BY t.category;
